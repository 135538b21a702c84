"""Evaluate the served target-sentiment model (int8 ONNX) on a NewsMTSC JSONL file.

The numbers come from ``TargetSentimentModel`` itself, i.e. the artefact the service loads,
not from the torch model it was trained from. VADER with thresholds tuned on train is
reported alongside as the floor.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput
from storyline.models.sentiment import (
    LABELS,
    VADER_THRESHOLDS,
    TargetSentimentModel,
    load_newsmtsc,
    macro_f1,
    newsmtsc_offset,
    tune_vader_thresholds,
    vader_predict,
)

__all__ = ["classification_metrics", "evaluate_target_sentiment"]


def classification_metrics(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> dict[str, Any]:
    """Macro-F1, accuracy and per-class precision/recall/F1/support over LABELS."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    per_class: dict[str, dict[str, float | int]] = {}
    for k, name in enumerate(LABELS):
        tp = int(np.sum((t == k) & (p == k)))
        fp = int(np.sum((t != k) & (p == k)))
        fn = int(np.sum((t == k) & (p != k)))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        per_class[name] = {
            "precision": round(prec, 4),
            "recall": round(rec, 4),
            "f1": round(f1, 4),
            "support": tp + fn,
        }
    return {
        "macro_f1": round(macro_f1(t, p, len(LABELS)), 4),
        "accuracy": round(float(np.mean(t == p)) if len(t) else 0.0, 4),
        "n": len(t),
        "per_class": per_class,
    }


def _mention_mismatches(path: Path) -> list[int]:
    """Line numbers, one per target, whose optional ``mention`` is not the sentence's text at
    its offsets. The offsets are what is scored; a file whose offsets count something else
    (UTF-16 units, bytes, another normalisation of the sentence) would otherwise be scored
    on the wrong words without a sign."""
    from storyline.models.jsonl import jsonl_objects

    out: list[int] = []
    for n, row in jsonl_objects(path):  # load_newsmtsc has checked every line already
        sentence = row["sentence_normalized"]
        for t in row["targets"]:
            mention = t.get("mention")
            span = sentence[newsmtsc_offset(t["from"]) : newsmtsc_offset(t["to"])]
            if isinstance(mention, str) and span != mention:
                out.append(n)
    return out


def evaluate_target_sentiment(
    newsmtsc_file: Path,
    models_dir: Path,
    *,
    train_file: Path | None = None,
    threads: int = 2,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Score the served model on ``newsmtsc_file``; VADER thresholds come from ``train_file``.

    Without ``train_file`` VADER uses the shipped ``VADER_THRESHOLDS`` (tuned on NewsMTSC
    train). ``ms_per_target`` is wall time of ``predict`` (tokenising included) per target.
    ``mention_mismatches`` counts targets whose ``mention`` differs from the sentence at the
    offsets (``mention_mismatch_lines``: the first five lines); they are scored as given.
    """
    items, y = load_newsmtsc(newsmtsc_file)
    if not items:
        raise InvalidInput(f"nothing to evaluate: {newsmtsc_file} has no targets")
    mismatched = _mention_mismatches(newsmtsc_file)
    train: tuple[list[tuple[str, int, int]], npt.NDArray[np.int64]] | None = None
    if train_file is not None:  # checked before the model loads
        train = load_newsmtsc(train_file)
        if not train[0]:
            raise InvalidInput(f"--train: {train_file} has no targets to tune VADER on")
    model = TargetSentimentModel(models_dir, threads=threads)
    t0 = time.perf_counter()
    probs = model.predict(items, batch_size=batch_size)
    elapsed = time.perf_counter() - t0
    result = classification_metrics(y, probs.argmax(axis=1))
    result["ms_per_target"] = round(1000 * elapsed / max(1, len(items)), 3)
    result["examples_per_s"] = round(len(items) / elapsed, 1) if elapsed > 0 else None
    result["model_id"] = model.model_id
    result["mention_mismatches"] = len(mismatched)
    result["mention_mismatch_lines"] = mismatched[:5]

    thresholds = tune_vader_thresholds(*train) if train is not None else VADER_THRESHOLDS
    vader = classification_metrics(y, vader_predict(items, thresholds))
    result["baseline_vader"] = {
        "macro_f1": vader["macro_f1"],
        "accuracy": vader["accuracy"],
        "thresholds": list(thresholds),
    }
    return result
