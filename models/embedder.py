"""Runtime sentence embedder: int8 ONNX MiniLM on onnxruntime + tokenizers (no torch).

preprocess (tokenise, length-sorted batches) -> session.run -> postprocess (mean pooling
over real tokens, L2 normalisation), fastembed-style.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.registry import EMBEDDER, Manifest

__all__ = ["MAX_TOKENS", "OnnxEmbedder", "load_tokenizer", "make_session"]

log = logging.getLogger(__name__)

#: all-MiniLM-L6-v2 was trained at 256 word pieces (its sentence-transformers config);
#: the shipped tokenizer.json says 128, which silently drifts long articles away from
#: the reference vectors.
MAX_TOKENS = 256


def make_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the other core while idle; on a shared 2-core box that
    # costs more than the wake-up latency it saves.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def load_tokenizer(path: Path, max_tokens: int = MAX_TOKENS) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_tokens)
    # Pad per batch to its longest member, never to a fixed width.
    pad_id = tok.token_to_id("[PAD]") or 0
    tok.enable_padding(pad_id=pad_id, pad_token="[PAD]")
    return tok


class OnnxEmbedder:
    """The int8 MiniLM embedder built by ``storyline models build``."""

    def __init__(
        self,
        models_dir: Path,
        *,
        threads: int = 2,
        batch_size: int = 32,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        manifest = Manifest(models_dir)
        folder = manifest.verify(EMBEDDER)
        rec = manifest.get(EMBEDDER.name)
        digest = rec.files[f"{EMBEDDER.folder}/{EMBEDDER.file}"] if rec else ""
        self._init(folder, threads, batch_size, max_tokens, f"{EMBEDDER.name}:{digest[:12]}")

    @classmethod
    def from_folder(
        cls, folder: Path, *, threads: int = 2, batch_size: int = 32, max_tokens: int = MAX_TOKENS
    ) -> OnnxEmbedder:
        """Load an unregistered build (the build's own self-check uses this)."""
        self = cls.__new__(cls)
        self._init(folder, threads, batch_size, max_tokens, f"{EMBEDDER.name}:unregistered")
        return self

    def _init(
        self, folder: Path, threads: int, batch_size: int, max_tokens: int, model_id: str
    ) -> None:
        self._session = make_session(folder / EMBEDDER.file, threads)
        self._tokenizer = load_tokenizer(folder / "tokenizer.json", max_tokens)
        self._input_names = {i.name for i in self._session.get_inputs()}
        self._batch_size = batch_size
        self._model_id = model_id
        # InferenceSession.run is thread-safe, but the tokenizer's padding/truncation
        # state is shared: serialise the (cheap) encode step only.
        self._tok_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return EMBEDDER.dim

    @property
    def model_id(self) -> str:
        return self._model_id

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        with self._tok_lock:
            encs = self._tokenizer.encode_batch(list(texts))
        return [int(sum(e.attention_mask)) for e in encs]

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if isinstance(texts, str):
            raise InvalidInput("embed() takes a sequence of texts, not one string")
        n = len(texts)
        out = np.empty((n, EMBEDDER.dim), dtype=np.float32)
        if n == 0:
            return out
        # Sort by character length so each batch pads to a similar token length.
        order = sorted(range(n), key=lambda i: len(texts[i]))
        for start in range(0, n, self._batch_size):
            idx = order[start : start + self._batch_size]
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out

    def _embed_batch(self, batch: list[str]) -> npt.NDArray[np.float32]:
        with self._tok_lock:
            encs = self._tokenizer.encode_batch(batch)
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        try:
            (hidden,) = self._session.run(["last_hidden_state"], feeds)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelUnavailable(f"embedder inference failed: {exc}") from exc
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
