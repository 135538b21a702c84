"""Runtime sentence embedder: int8 ONNX MiniLM on onnxruntime + tokenizers (no torch).

Each text runs through the graph on its own, unpadded: tokenise -> session.run -> the
graph itself mean-pools and L2-normalises (output ``sentence_embedding``). Why one text
per run (see ``embedder_build.RECIPE`` and bench/RESULTS.md for the measurements):

- the int8 graph quantises activations dynamically, with one scale per run; in a padded
  batch a text's vector depended on its batch-mates (cosine down to 0.986 between the
  same text embedded alone and in a batch). One text per run makes every vector a
  function of its text only, so results do not depend on order or batching;
- no padding means no mask, so attention needs no masking path (MLAS flash attention or
  plain GEMMs + Softmax, whichever the build timed faster on its CPU), and no wasted
  tokens (char-length-sorted batches of 32 padded 16% of the tokens);
- throughput comes from running ``threads`` texts at once, one single-threaded run per
  worker thread: no intra-op barriers, which on the shared 2-core box cost more than the
  work they split. A lone text (latency) uses all threads on one run instead.
"""

from __future__ import annotations

import logging
import queue
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.jsonl import SURROGATE_MESSAGE
from storyline.models.memo import RowMemo
from storyline.models.registry import EMBEDDER, Manifest

if TYPE_CHECKING:
    from storyline.models.protocols import Embedder
    from storyline.models.shared_cache import SharedCache

__all__ = ["MAX_TOKENS", "CachingEmbedder", "OnnxEmbedder", "load_tokenizer", "make_session"]

log = logging.getLogger(__name__)

#: all-MiniLM-L6-v2 was trained at 256 word pieces (its sentence-transformers config);
#: the shipped tokenizer.json says 128, which silently drifts long articles away from
#: the reference vectors.
MAX_TOKENS = 256

#: The graph output built by ``embedder_build`` (pooled and normalised in-graph).
POOLED_OUTPUT = "sentence_embedding"
#: Output of builds before recipe 4 (pooled here instead).
HIDDEN_OUTPUT = "last_hidden_state"


# A lone surrogate (a command-line argument that is not UTF-8 decodes to one) is a valid
# Python str but no Rust string: the tokenizer raised TypeError, a traceback from
# `storyline search` and a 500 from anything that embeds a caller's text.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


#: ORT would re-fuse the graph's Add + LayerNormalization into SkipLayerNormalization,
#: whose CPU kernel is the slower one (see ``embedder_build._restructure``).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def make_session(path: Path, threads: int, disabled_optimizers: Sequence[str] = ()) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the other core while idle; on a shared 2-core box that
    # costs more than the wake-up latency it saves.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads > 1:
        # Hand out parallel-loop work in small dynamic blocks instead of fixed halves: when
        # the box is busy one of our threads is often descheduled, and with static halves
        # the other waits for it (measured +14% throughput under load).
        opts.add_session_config_entry("session.dynamic_block_base", "4")
    opts.log_severity_level = 3
    return ort.InferenceSession(
        str(path),
        sess_options=opts,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled_optimizers),
    )


def load_tokenizer(path: Path, max_tokens: int = MAX_TOKENS) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_tokens)
    # Texts run one at a time, unpadded; the build also stores padding=None.
    tok.no_padding()
    return tok


class OnnxEmbedder:
    """The int8 MiniLM embedder built by ``storyline models build``.

    ``threads``: CPU threads used (worker threads for many texts, intra-op threads for
    one). ``batch_size``: texts tokenised per step; the next step is tokenised while the
    workers run the current one. It does not change any vector.
    """

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
        if threads < 1 or batch_size < 1 or max_tokens < 2:
            raise InvalidInput("threads and batch_size must be >= 1, max_tokens >= 2")
        path = folder / EMBEDDER.file
        try:
            # One session spreads a lone text over all threads (latency); the workers
            # share a second, single-threaded one (throughput).
            self._session = make_session(path, threads, DISABLED_OPTIMIZERS)
            self._worker_session = (
                make_session(path, 1, DISABLED_OPTIMIZERS) if threads > 1 else self._session
            )
            self._tokenizer = load_tokenizer(folder / "tokenizer.json", max_tokens)
        except Exception as exc:  # onnxruntime / tokenizers raise their own types
            raise ModelUnavailable(f"cannot load the embedder from {folder}: {exc}") from exc
        self._input_names = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        self._output = POOLED_OUTPUT if POOLED_OUTPUT in outputs else HIDDEN_OUTPUT
        self._threads = threads
        self._batch_size = batch_size
        self._model_id = model_id
        self._pool = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="storyline-embed")
            if threads > 1
            else None
        )

    @property
    def dim(self) -> int:
        return int(EMBEDDER.dim)

    @property
    def model_id(self) -> str:
        return self._model_id

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text after truncation, [CLS] and [SEP] included."""
        items = self._check(texts)
        return [len(e.ids) for e in self._encode(items)]

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """float32 [len(texts), 384], L2-normalised; row i embeds texts[i]."""
        items = self._check(texts)
        out = np.empty((len(items), EMBEDDER.dim), dtype=np.float32)
        if not items:
            return out
        if len(items) == 1:
            out[0] = self._run(self._session, self._encode(items)[0].ids)
        elif self._pool is None:
            for start in range(0, len(items), self._batch_size):
                encs = self._encode(items[start : start + self._batch_size])
                for j, enc in enumerate(encs):
                    out[start + j] = self._run(self._session, enc.ids)
        else:
            self._embed_parallel(items, out)
        return out

    # -- internals ----------------------------------------------------------------------
    @staticmethod
    def _check(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise InvalidInput("embed() takes a sequence of texts, not one string")
        items = list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise InvalidInput(f"embed() takes strings, got {type(t).__name__}")
            if _SURROGATE_RE.search(t):
                raise InvalidInput(f"text {i}: {SURROGATE_MESSAGE}")
        return items

    def _encode(self, items: list[str]) -> list[Any]:
        # The tokenizer's settings are fixed at load, so concurrent encodes are safe.
        return list(self._tokenizer.encode_batch(items))

    def _run(self, session: Any, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        arr = np.asarray(ids, dtype=np.int64)[None, :]
        feeds = {"input_ids": arr}
        # Builds before recipe 4 also take a mask and token types.
        if "attention_mask" in self._input_names:
            feeds["attention_mask"] = np.ones_like(arr)
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(arr)
        try:
            (vec,) = session.run([self._output], feeds)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelUnavailable(f"embedder inference failed: {exc}") from exc
        if self._output == HIDDEN_OUTPUT:
            vec = vec.mean(axis=1)
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return np.asarray(vec[0], dtype=np.float32)

    def _embed_parallel(self, items: list[str], out: npt.NDArray[np.float32]) -> None:
        assert self._pool is not None
        jobs: queue.Queue[tuple[int, list[int]] | None] = queue.Queue(maxsize=4 * self._batch_size)
        errors: list[BaseException] = []

        def work() -> None:
            while (job := jobs.get()) is not None:
                if errors:
                    continue  # drain, so the producer never blocks on a full queue
                i, ids = job
                try:
                    out[i] = self._run(self._worker_session, ids)
                except BaseException as exc:
                    errors.append(exc)

        workers = [self._pool.submit(work) for _ in range(self._threads)]
        try:
            for start in range(0, len(items), self._batch_size):
                # Tokenised here while the workers run the previous step.
                encs = self._encode(items[start : start + self._batch_size])
                # Longest first: the stragglers at the end of the call are short texts.
                for j in sorted(range(len(encs)), key=lambda j: -len(encs[j].ids)):
                    jobs.put((start + j, encs[j].ids))
        finally:
            for _ in workers:
                jobs.put(None)
            for w in workers:
                w.result()
        if errors:
            raise errors[0]


class CachingEmbedder:
    """An ``Embedder`` that remembers the vectors of the last ``size`` distinct texts.

    Sound because a text's vector does not depend on what else is embedded with it (each
    text runs alone, unpadded). Stories change one article at a time, and the summariser
    re-embeds every sentence of a story whenever it changes: with this in front only the
    new article's sentences reach the model.
    """

    def __init__(
        self, inner: Embedder, size: int = 20_000, shared: SharedCache | None = None
    ) -> None:
        self._inner = inner
        self._memo: RowMemo[str] = RowMemo(
            size, None if shared is None else (shared, f"embed:{inner.model_id}")
        )

    @property
    def hits(self) -> int:
        return self._memo.hits

    @property
    def misses(self) -> int:
        return self._memo.misses

    @property
    def dim(self) -> int:
        return int(self._inner.dim)

    @property
    def model_id(self) -> str:
        return str(self._inner.model_id)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        items = OnnxEmbedder._check(texts)
        return self._memo.get(items, self.dim, self._inner.embed)

    def remember(self, texts: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
        """Seed the cache with vectors already computed for ``texts`` by the same model."""
        self._memo.put(list(texts), vectors)
