"""Runtime target-dependent sentiment: int8 ONNX MiniLM on onnxruntime + tokenizers (no torch).

Given a sentence and the character span of a target in it, say whether the sentence speaks
of that target negatively, neutrally or positively (NewsMTSC's labels). The target is
wrapped in place with two added special tokens, ``[TGT] … [/TGT]``; the graph finds the
markers itself, so its only inputs are ``input_ids`` and ``attention_mask``.

The input encoding lives here, not in the training module, so training and serving share
one code path: a drift between the two would be silent (the head would read the wrong
position) rather than loud.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.registry import STANCE, Manifest

__all__ = [
    "LABELS",
    "MAX_TOKENS",
    "TGT_CLOSE",
    "TGT_OPEN",
    "VADER_THRESHOLDS",
    "TargetSentimentModel",
    "encode_items",
    "load_newsmtsc",
    "macro_f1",
    "mark_target",
    "newsmtsc_offset",
    "pad_batch",
    "tune_vader_thresholds",
    "vader_compound",
    "vader_predict",
    "validate_span",
]

log = logging.getLogger(__name__)

#: Output order of the model's logits and of ``predict``'s columns.
LABELS: Final = ("negative", "neutral", "positive")
#: NewsMTSC polarity codes -> index into LABELS.
POLARITY_TO_INDEX: Final = {2.0: 0, 4.0: 1, 6.0: 2}

TGT_OPEN: Final = "[TGT]"
TGT_CLOSE: Final = "[/TGT]"
#: Word pieces per example, [CLS] and [SEP] included. NewsMTSC sentences average ~37;
#: longer ones are windowed around the target (see ``_window``), never cut blindly.
MAX_TOKENS: Final = 128
#: Characters kept on each side of a target (and of the target itself) before tokenising.
#: ``_window`` keeps at most ``MAX_TOKENS`` word pieces around the target; 1,500 characters
#: hold far more than that in any ordinary text, so only run-on sentences are cut, and a
#: sentence no longer than ``2 * CLIP_CHARS`` plus its target (NewsMTSC's longest is 731)
#: is never touched. Without the cut every mention of a long sentence tokenised the whole
#: sentence: quadratic in its length (a 35k-character sentence, 400 mentions: 60+ s).
CLIP_CHARS: Final = 1500

# Bracketed special-token strings inside user text would be matched as the real tokens
# (a literal "[TGT]" would move the head's read position): defuse them first.
_SPECIAL_RE = re.compile(r"\[(/?TGT|CLS|SEP|PAD|MASK|UNK)\]", re.IGNORECASE)
_SPACE_RE = re.compile(r"\s+")
# A lone surrogate (JSON's "\ud800" decodes to one) is a valid Python str but no Rust
# string: the tokenizer raised TypeError on it. One code point for one keeps every offset.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")

#: (lo, hi) on VADER's compound score of the whole sentence: < lo negative, > hi positive.
#: Tuned for macro-F1 on NewsMTSC train.jsonl by ``tune_vader_thresholds`` (grid step 0.05;
#: train macro-F1 0.537).
VADER_THRESHOLDS: Final = (0.0, 0.35)


def validate_span(sentence: object, start: object, end: object) -> None:
    """Raise InvalidInput unless ``sentence[start:end]`` is a non-blank target span."""
    if not isinstance(sentence, str):
        raise InvalidInput(f"sentence must be a string, got {type(sentence).__name__}")
    # bool is an int subclass; a True/False span is always a caller bug.
    for name, v in (("start", start), ("end", end)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool):
            raise InvalidInput(f"span {name} must be an integer, got {type(v).__name__}")
    s, e = int(start), int(end)  # type: ignore[call-overload]
    if not 0 <= s < e <= len(sentence):
        raise InvalidInput(
            f"target span [{s}, {e}) is not inside the sentence (length {len(sentence)})"
        )
    if not sentence[s:e].strip():
        raise InvalidInput(f"target span [{s}, {e}) is blank")


def _defuse(text: str) -> str:
    return _SPECIAL_RE.sub(lambda m: f"( {m.group(1)} )", text)


def mark_target(sentence: str, start: int, end: int) -> str:
    """The sentence with its target wrapped in ``[TGT] … [/TGT]``."""
    return (
        f"{_defuse(sentence[:start])} {TGT_OPEN} {_defuse(sentence[start:end])} "
        f"{TGT_CLOSE} {_defuse(sentence[end:])}"
    )


def _clip(sentence: str, start: int, end: int, margin: int = CLIP_CHARS) -> tuple[str, int, int]:
    """``(sentence, start, end)`` cut to ``margin`` characters each side of the target (and
    the target to its first ``margin``), at whitespace where there is any, so no word is
    split; short sentences come back unchanged."""
    if len(sentence) <= 2 * margin + (end - start):
        return sentence, start, end
    if end - start > margin:
        cut = sentence.rfind(" ", start + 1, start + margin)
        end = cut if cut > start and sentence[start:cut].strip() else start + margin
    lo, hi = max(0, start - margin), min(len(sentence), end + margin)
    if lo > 0 and (m := _SPACE_RE.search(sentence, lo, start)):
        lo = m.end()
    if hi < len(sentence):
        ws = [m.start() for m in _SPACE_RE.finditer(sentence, end, hi)]
        if ws:
            hi = ws[-1]
    return sentence[lo:hi], start - lo, end - lo


def _window(ids: list[int], open_id: int, close_id: int, max_tokens: int) -> list[int]:
    """Cut ``[CLS] body [SEP]`` to ``max_tokens`` keeping both markers and the target.

    The window is centred on the target span; a target longer than the budget keeps its
    first word pieces, still between its two markers.
    """
    if len(ids) <= max_tokens:
        return ids
    cls, body, sep = ids[0], ids[1:-1], ids[-1]
    budget = max_tokens - 2
    o = body.index(open_id)
    c = body.index(close_id, o)
    span = c - o + 1
    if span <= budget:
        start = o - (budget - span) // 2
        start = max(0, min(start, len(body) - budget))
        body = body[start : start + budget]
    else:
        body = [open_id, *body[o + 1 : o + budget - 1], close_id]
    return [cls, *body, sep]


def encode_items(
    tokenizer: Any, items: Sequence[tuple[str, int, int]], max_tokens: int = MAX_TOKENS
) -> list[list[int]]:
    """Token ids per (sentence, start, end), markers in, at most ``max_tokens`` long.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` with the markers added and no
    truncation/padding enabled (the windowing here replaces truncation).
    """
    open_id = tokenizer.token_to_id(TGT_OPEN)
    close_id = tokenizer.token_to_id(TGT_CLOSE)
    if open_id is None or close_id is None:
        raise ModelUnavailable("the stance tokenizer lacks the [TGT]/[/TGT] tokens")
    texts = [_SURROGATE_RE.sub("\ufffd", mark_target(*_clip(s, a, b))) for s, a, b in items]
    encs = tokenizer.encode_batch(texts)
    return [_window(list(e.ids), open_id, close_id, max_tokens) for e in encs]


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-pad to the longest sequence: (input_ids, attention_mask), both int64."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def newsmtsc_offset(value: object) -> int:
    """A character offset as NewsMTSC writes it: an integer (3, 3.0 or "3"); int() would
    quietly cut 3.7 to 3 and score another span."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"an offset must be an integer, got {value!r}")
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"an offset must be an integer, got {value!r}")
    return int(number)


def load_newsmtsc(path: Path) -> tuple[list[tuple[str, int, int]], npt.NDArray[np.int64]]:
    """One (sentence, start, end) item and label index per target of a NewsMTSC JSONL file."""
    from storyline.models.jsonl import jsonl_objects

    items: list[tuple[str, int, int]] = []
    labels: list[int] = []
    for lineno, row in jsonl_objects(path):
        try:
            sentence = row["sentence_normalized"]
            for t in row["targets"]:
                start, end = newsmtsc_offset(t["from"]), newsmtsc_offset(t["to"])
                validate_span(sentence, start, end)
                polarity = float(t["polarity"])
                if polarity not in POLARITY_TO_INDEX:
                    raise ValueError(
                        f"polarity must be 2.0, 4.0 or 6.0 (negative, neutral, positive), "
                        f"got {t['polarity']!r}")
                items.append((sentence, start, end))
                labels.append(POLARITY_TO_INDEX[polarity])
        except (ValueError, KeyError, TypeError, InvalidInput) as exc:
            raise InvalidInput(f"{path}:{lineno}: not a NewsMTSC line ({exc})") from exc
    return items, np.asarray(labels, dtype=np.int64)


def _softmax(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def _make_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(threads, 2))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the other core while idle; on a shared 2-core box that
    # costs more than the wake-up latency it saves.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    # Windowing in encode_items replaces truncation, and batches pad themselves.
    tok.no_truncation()
    tok.no_padding()
    return tok


class TargetSentimentModel:
    """The int8 NewsMTSC model built by ``build_stance`` (storyline.models.stance_train)."""

    def __init__(self, models_dir: Path, *, threads: int = 2) -> None:
        if threads < 1:
            raise InvalidInput("threads must be >= 1")
        folder = Manifest(models_dir).verify(STANCE)
        try:
            # Every item runs alone and unpadded: dynamic int8 quantises activations with
            # scales taken over the whole input tensor, so in a padded batch an item's
            # answer depended on its neighbours (2.2 % of NewsMTSC devtest labels flipped
            # between batch 32 and batch 1). Alone, an item always gets the same answer.
            # One single-threaded session per worker thread keeps both cores busy; the
            # throughput matched padded batches of 32 on this machine.
            self._session = _make_session(folder / STANCE.file, 1)
            self._tokenizer = _load_tokenizer(folder / "tokenizer.json")
        except Exception as exc:  # onnxruntime/tokenizers raise their own untyped errors
            raise ModelUnavailable(f"cannot load the stance model: {exc}") from exc
        if self._tokenizer.token_to_id(TGT_OPEN) is None:
            raise ModelUnavailable("the stance tokenizer lacks the [TGT]/[/TGT] tokens")
        rec = Manifest(models_dir).get(STANCE.name)
        digest = rec.files.get(f"{STANCE.folder}/{STANCE.file}", "") if rec else ""
        self.model_id = f"{STANCE.name}:{digest[:12]}"
        # The session is thread-safe; encode_batch on a shared Tokenizer is cheap, so
        # serialising it costs nothing and spares us reasoning about its internals.
        self._tok_lock = threading.Lock()
        self._threads = threads
        self._pool = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="storyline-stance")
            if threads > 1
            else None
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return LABELS

    def predict(
        self, items: Sequence[tuple[str, int, int]], batch_size: int = 32
    ) -> npt.NDArray[np.float32]:
        """Probabilities [n, 3] (negative, neutral, positive) for each (sentence, start, end).

        An item's answer depends on that item only (not on order or on what else is in
        the call). ``batch_size`` only sizes the steps the work is handed out in.
        """
        if isinstance(items, str):
            raise InvalidInput("predict() takes a sequence of (sentence, start, end) tuples")
        if batch_size < 1:
            raise InvalidInput("batch_size must be >= 1")
        for i, it in enumerate(items):
            if not isinstance(it, tuple | list) or len(it) != 3:
                raise InvalidInput(f"item {i} is not a (sentence, start, end) triple")
            try:
                validate_span(*it)
            except InvalidInput as exc:
                raise InvalidInput(f"item {i}: {exc.detail}") from None
        n = len(items)
        out = np.empty((n, len(LABELS)), dtype=np.float32)
        if n == 0:
            return out
        triples = [(s, int(a), int(b)) for s, a, b in items]
        with self._tok_lock:
            seqs = encode_items(self._tokenizer, triples)
        # Longest first, so the last items handed out are the short ones.
        order = sorted(range(n), key=lambda i: -len(seqs[i]))
        for b0 in range(0, n, batch_size):
            idx = order[b0 : b0 + batch_size]
            if self._pool is None or len(idx) == 1:
                rows = [self._run_one(seqs[i]) for i in idx]
            else:
                rows = list(self._pool.map(self._run_one, [seqs[i] for i in idx]))
            out[idx] = np.stack(rows)
        return out

    def _run_one(self, ids: list[int]) -> npt.NDArray[np.float32]:
        arr = np.asarray(ids, dtype=np.int64)[None, :]
        try:
            (logits,) = self._session.run(
                ["logits"], {"input_ids": arr, "attention_mask": np.ones_like(arr)}
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelUnavailable(f"stance inference failed: {exc}") from exc
        row: npt.NDArray[np.float32] = _softmax(np.asarray(logits, dtype=np.float32))[0]
        return row

    def predict_labels(self, items: Sequence[tuple[str, int, int]]) -> list[str]:
        probs = self.predict(items)
        return [LABELS[int(k)] for k in probs.argmax(axis=1)]


# --- VADER: the floor any learned model must clear -------------------------------------


def vader_compound(items: Sequence[tuple[str, int, int]]) -> npt.NDArray[np.float64]:
    """VADER's compound score of each item's sentence (the target is ignored: VADER can't)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sia = SentimentIntensityAnalyzer()
    cache: dict[str, float] = {}
    out = np.empty(len(items), dtype=np.float64)
    for i, (sentence, _a, _b) in enumerate(items):
        if sentence not in cache:
            cache[sentence] = float(sia.polarity_scores(sentence)["compound"])
        out[i] = cache[sentence]
    return out


def _threshold(compound: npt.NDArray[np.float64], lo: float, hi: float) -> npt.NDArray[np.int64]:
    labels = np.ones(len(compound), dtype=np.int64)
    labels[compound < lo] = 0
    labels[compound > hi] = 2
    return labels


def vader_predict(
    items: Sequence[tuple[str, int, int]],
    thresholds: tuple[float, float] = VADER_THRESHOLDS,
) -> npt.NDArray[np.int64]:
    """Label indices into LABELS from VADER's compound score and (lo, hi) thresholds."""
    lo, hi = thresholds
    return _threshold(vader_compound(items), lo, hi)


def macro_f1(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_labels: int = 3) -> float:
    """Unweighted mean of per-class F1 over the classes present in either array (as sklearn)."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    f1s = []
    for k in range(n_labels):
        if not np.any(t == k) and not np.any(p == k):
            continue
        tp = float(np.sum((t == k) & (p == k)))
        fp = float(np.sum((t != k) & (p == k)))
        fn = float(np.sum((t == k) & (p != k)))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def tune_vader_thresholds(
    items: Sequence[tuple[str, int, int]], labels: npt.ArrayLike, step: float = 0.05
) -> tuple[float, float]:
    """(lo, hi) maximising macro-F1 of ``vader_predict`` on (items, labels), grid search."""
    compound = vader_compound(items)
    y = np.asarray(labels)
    grid = np.round(np.arange(-1.0, 1.0 + 1e-9, step), 4)
    best = (float("-inf"), VADER_THRESHOLDS)
    for lo in grid:
        for hi in grid[grid >= lo]:
            f = macro_f1(y, _threshold(compound, float(lo), float(hi)))
            if f > best[0]:
                best = (f, (float(lo), float(hi)))
    return best[1]
