"""Export a local Hugging Face seq2seq model to the ONNX graphs ``models.seq2seq`` runs.

Build-time only: torch, transformers and onnx are imported inside the functions (the
``build`` extra). ``storyline models export-seq2seq SRC`` calls :func:`export_seq2seq`:

1. load ``SRC`` with ``AutoModelForSeq2SeqLM`` / ``AutoTokenizer`` (``local_files_only``;
   a fast tokenizer is required: its ``tokenizer.json`` is what the runtime reads);
2. export three graphs with ``torch.onnx.export`` (TorchScript exporter, eager attention):
   the encoder, the first decoder step (which also returns the cross-attention key/values)
   and one cached decoder step (see ``models.seq2seq``);
3. check, before anything is installed: the runtime tokenizer gives the same ids as the
   Hugging Face one, and the fp32 graphs' greedy output equals
   ``model.generate(do_sample=False, num_beams=1)`` token for token on a probe text;
4. optionally quantise the three graphs to int8 (``quantize_dynamic``, per-channel) and
   record how far int8 greedy output agrees with fp32 (information: int8 may pick another
   token where two are close, after which the texts differ);
5. move the files into ``<models_dir>/seq2seq/`` and record them in the manifest with
   their sha256 (the runtime refuses a file that does not match).

Limits: graphs over 2 GB (protobuf limit; e.g. T5-large fp32) are refused, since the
exporter would write their weights as external files the manifest does not track.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storyline.models.errors import ModelBuildError
from storyline.models.registry import Manifest, package_versions, sha256_file
from storyline.models.seq2seq import (
    CONFIG_FILE,
    DECODER_INIT_FILE,
    DECODER_STEP_FILE,
    ENCODER_FILE,
    SEQ2SEQ,
    TOKENIZER_FILE,
    Seq2SeqConfig,
    Seq2SeqSummariser,
    past_names,
)

__all__ = ["DEFAULT_PROBE", "RECIPE", "export_seq2seq", "reference_generate"]

Log = Callable[[str], None]

RECIPE: dict[str, Any] = {
    "version": 1,
    "opset": 17,
    "exporter": "torch.onnx.export (TorchScript, dynamo=False), eager attention",
    "graphs": "encoder; decoder_init (start token -> logits, self + cross key/values); "
    "decoder_step (one token + cache -> logits, grown self key/values)",
    "quantisation": "quantize_dynamic QInt8 per_channel=True reduce_range=False",
    "check": "fp32 greedy ids == generate(do_sample=False, num_beams=1) on a probe text",
}

#: A probe text for the equality check when none is given.
DEFAULT_PROBE = (
    "The city council voted on Tuesday to expand the bus network after months of debate. "
    "Supporters said the plan would cut commute times, while critics warned about costs. "
    "The mayor said the first new routes would open next spring."
)

_MAX_PROTO_BYTES = 2_000_000_000


def _require_build_extra() -> None:
    missing = []
    for mod in ("torch", "transformers", "onnx"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ModelBuildError(
            f"exporting a seq2seq model needs {', '.join(missing)}: "
            "install the build extra (`pip install torch==2.13.0 && pip install -e '.[build]'`)"
        )


def _versions() -> dict[str, str]:
    return package_versions("torch", "transformers", "onnx", "onnxruntime", "tokenizers")


def _load(src: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if not (src / "config.json").is_file():
        raise ModelBuildError(f"{src} is not a Hugging Face model folder (no config.json)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForSeq2SeqLM.from_pretrained(
                str(src), local_files_only=True, attn_implementation="eager"
            ).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ModelBuildError(f"cannot load a seq2seq model from {src}: {exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
                str(src), local_files_only=True
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
        # Without tokenizer files transformers fails on a None path (a TypeError): say so.
        missing = "" if (src / "tokenizer.json").is_file() else (
            " (the folder has no tokenizer.json: save the model's tokenizer into it with "
            "save_pretrained)"
        )
        raise ModelBuildError(f"cannot load the tokenizer of {src}: {exc}{missing}") from exc
    if not getattr(tok, "is_fast", False):
        raise ModelBuildError(
            f"{src}: the tokenizer has no fast (tokenizers) version; the runtime needs one"
        )
    return model, tok


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _config(
    model: Any, tok: Any, src: Path, *, prefix: str | None, max_input_tokens: int | None,
    max_new_tokens: int, num_layers: int, quantise: bool,
) -> Seq2SeqConfig:
    cfg, gen = model.config, model.generation_config
    start = gen.decoder_start_token_id
    if start is None:
        start = cfg.decoder_start_token_id
    eos = _as_ids(gen.eos_token_id) or _as_ids(cfg.eos_token_id)
    pad = gen.pad_token_id if gen.pad_token_id is not None else cfg.pad_token_id
    if start is None or not eos:
        raise ModelBuildError(f"{src}: the model config has no decoder start or EOS token id")
    if max_input_tokens is None:
        limits = [
            v for v in (getattr(cfg, "max_position_embeddings", None), tok.model_max_length)
            if isinstance(v, int) and 0 < v < 100_000
        ]
        max_input_tokens = min(limits) if limits else 512
    if prefix is None:
        task = (getattr(cfg, "task_specific_params", None) or {}).get("summarization", {})
        prefix = str(task.get("prefix", ""))
    forced = gen.forced_bos_token_id
    positions = getattr(cfg, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # Learned decoder positions: the decoder reads at most this many tokens.
        max_new_tokens = min(max_new_tokens, positions)
    return Seq2SeqConfig(
        decoder_start_token_id=int(start),
        eos_token_ids=eos,
        pad_token_id=int(pad if pad is not None else eos[0]),
        num_layers=num_layers,
        forced_bos_token_id=int(forced) if forced is not None else -1,
        no_repeat_ngram_size=int(gen.no_repeat_ngram_size or 0),
        max_input_tokens=int(max_input_tokens),
        max_new_tokens=int(max_new_tokens),
        prefix=prefix,
        quantisation="int8" if quantise else "fp32",
        source=src.resolve().name,
    )


def _wrappers(model: Any, num_layers: int, hidden_size: int) -> tuple[Any, Any, Any]:
    import torch
    from transformers.cache_utils import EncoderDecoderCache

    def flat(cache: Any, cross: bool) -> list[Any]:
        legacy = cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else cache
        out: list[Any] = []
        for layer in legacy:
            out += list(layer[:4] if cross else layer[:2])
        return out

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.get_encoder()

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]

    class DecoderInit(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, decoder_input_ids: Any, encoder_hidden_states: Any,
                    encoder_attention_mask: Any) -> Any:
            out = self.model(
                encoder_outputs=(encoder_hidden_states,), attention_mask=encoder_attention_mask,
                decoder_input_ids=decoder_input_ids, use_cache=True, return_dict=True,
            )
            return (out.logits[:, -1, :], *flat(out.past_key_values, True))

    class DecoderStep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, decoder_input_ids: Any, encoder_attention_mask: Any, *past: Any) -> Any:
            legacy = tuple(tuple(past[4 * i : 4 * i + 4]) for i in range(num_layers))
            cache = EncoderDecoderCache.from_legacy_cache(legacy)
            # Cross-attention reads the cached key/values; the states only give shapes.
            hidden = past[2].new_zeros(
                (encoder_attention_mask.shape[0], encoder_attention_mask.shape[1], hidden_size)
            )
            out = self.model(
                encoder_outputs=(hidden,), attention_mask=encoder_attention_mask,
                decoder_input_ids=decoder_input_ids, past_key_values=cache, use_cache=True,
                return_dict=True,
            )
            return (out.logits[:, -1, :], *flat(out.past_key_values, False))

    return Encoder().eval(), DecoderInit().eval(), DecoderStep().eval()


def _export(model: Any, out: Path, opset: int) -> int:
    """Write the three graphs into ``out``; returns the decoder layer count."""
    import torch

    batch, enc_len, past_len = 2, 7, 3
    ids = torch.randint(4, max(5, model.config.vocab_size), (batch, enc_len), dtype=torch.long)
    mask = torch.ones((batch, enc_len), dtype=torch.long)
    start = torch.full((batch, 1), int(model.config.decoder_start_token_id or 0), dtype=torch.long)
    with torch.no_grad():
        hidden = model.get_encoder()(input_ids=ids, attention_mask=mask)[0]
        probe = model(encoder_outputs=(hidden,), attention_mask=mask,
                      decoder_input_ids=start, use_cache=True, return_dict=True)
        cache = probe.past_key_values
        legacy = cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else cache
        num_layers = len(legacy)
        if any(len(layer) != 4 for layer in legacy):
            raise ModelBuildError("unsupported cache layout (expected self + cross key/values)")
        # A past longer than one token, so no size is traced as the constant 1.
        past: list[Any] = []
        for sk, _sv, ck, cv in legacy:
            shape = list(sk.shape)
            shape[2] = past_len
            past += [torch.randn(shape), torch.randn(shape), ck, cv]
    encoder, dec_init, dec_step = _wrappers(model, num_layers, int(hidden.shape[-1]))
    seq = {0: "batch", 1: "enc_seq"}
    kv_self = {0: "batch", 2: "past_seq"}
    kv_cross = {0: "batch", 2: "enc_seq"}
    present_init = past_names(num_layers, "present")
    past_in = past_names(num_layers, "past")
    present_step = past_names(num_layers, "present", cross=False)

    def kv_axes(names: list[str], self_axes: dict[int, str]) -> dict[str, dict[int, str]]:
        return {n: (self_axes if "self" in n else kv_cross) for n in names}

    common: dict[str, Any] = {"opset_version": opset, "dynamo": False, "do_constant_folding": True}
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer and deprecation warnings from torch / transformers internals: the
        # equality check below is what decides whether the graphs are right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder, (ids, mask), str(out / ENCODER_FILE),
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": seq, "attention_mask": seq, "last_hidden_state": seq},
            **common,
        )
        torch.onnx.export(
            dec_init, (start, hidden, mask), str(out / DECODER_INIT_FILE),
            input_names=["decoder_input_ids", "encoder_hidden_states", "encoder_attention_mask"],
            output_names=["logits", *present_init],
            dynamic_axes={
                "decoder_input_ids": {0: "batch"}, "encoder_hidden_states": seq,
                "encoder_attention_mask": seq, "logits": {0: "batch"},
                **kv_axes(present_init, {0: "batch"}),
            },
            **common,
        )
        torch.onnx.export(
            dec_step, (start, mask, *past), str(out / DECODER_STEP_FILE),
            input_names=["decoder_input_ids", "encoder_attention_mask", *past_in],
            output_names=["logits", *present_step],
            dynamic_axes={
                "decoder_input_ids": {0: "batch"}, "encoder_attention_mask": seq,
                "logits": {0: "batch"},
                **kv_axes(past_in, kv_self), **kv_axes(present_step, {0: "batch", 2: "new_seq"}),
            },
            **common,
        )
    written = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    graphs = (ENCODER_FILE, DECODER_INIT_FILE, DECODER_STEP_FILE)
    if set(written) != set(graphs) or max(written.values()) > _MAX_PROTO_BYTES:
        raise ModelBuildError(
            "the model is too large for single-file ONNX graphs (2 GB protobuf limit)"
        )
    return num_layers


def _quantise(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
            reduce_range=False,
        )


def reference_generate(
    model: Any, tok: Any, text: str, cfg: Seq2SeqConfig, max_new_tokens: int,
    *, min_new_tokens: int = 0,
) -> tuple[list[int], list[int]]:
    """Hugging Face greedy decoding with the runtime's rules: (input ids, output ids).

    Output ids exclude the decoder start token, like ``Seq2SeqSummariser.generate_ids``.
    """
    import torch
    from transformers import GenerationConfig

    enc = tok(cfg.prefix + text, truncation=True, max_length=cfg.max_input_tokens,
              return_tensors="pt")
    gen = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
        decoder_start_token_id=cfg.decoder_start_token_id, eos_token_id=list(cfg.eos_token_ids),
        pad_token_id=cfg.pad_token_id, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        forced_bos_token_id=cfg.forced_bos_token_id if cfg.forced_bos_token_id >= 0 else None,
        min_new_tokens=min_new_tokens or None,
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # use_model_defaults=False: only the rules above, none of the model's other
        # defaults (min_length, length_penalty, ...) that the runtime does not apply.
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             generation_config=gen, use_model_defaults=False)
    return [int(x) for x in enc["input_ids"][0]], [int(x) for x in out[0][1:]]


def _agreement(a: list[int], b: list[int]) -> float:
    """Length of the common prefix over the longer sequence (1.0 = identical)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n / max(1, len(a), len(b))


def export_seq2seq(
    src: Path,
    models_dir: Path,
    *,
    quantise: bool = True,
    prefix: str | None = None,
    max_input_tokens: int | None = None,
    max_new_tokens: int = 256,
    probe_text: str = DEFAULT_PROBE,
    check_tokens: int = 48,
    threads: int = 2,
    log: Log = print,
) -> dict[str, Any]:
    """Export, check and install ``src`` as the ``seq2seq-summariser``; returns the meta."""
    _require_build_extra()
    import torch

    if max_new_tokens < 1 or check_tokens < 1:
        raise ModelBuildError("max_new_tokens and check_tokens must be >= 1")
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    model, tok = _load(src)
    models_dir.mkdir(parents=True, exist_ok=True)
    folder = models_dir / SEQ2SEQ.folder
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp_s:
        tmp = Path(tmp_s)
        fp32 = tmp / "fp32"
        fp32.mkdir()
        log(f"exporting {src.name} to ONNX (encoder, decoder_init, decoder_step; fp32)")
        try:
            num_layers = _export(model, fp32, RECIPE["opset"])
        except ModelBuildError:
            raise
        except Exception as exc:  # an architecture whose forward the wrappers do not fit
            raise ModelBuildError(
                f"{src}: cannot export a {type(model).__name__} "
                f"({getattr(model.config, 'model_type', '?')}) to the runtime's graphs "
                f"(encoder + cached decoder): {type(exc).__name__}: {exc}"
            ) from exc
        cfg = _config(model, tok, src, prefix=prefix, max_input_tokens=max_input_tokens,
                      max_new_tokens=max_new_tokens, num_layers=num_layers, quantise=quantise)
        tok.backend_tokenizer.save(str(fp32 / TOKENIZER_FILE))
        (fp32 / CONFIG_FILE).write_text(cfg.to_json(), encoding="utf-8")

        check_tokens = min(check_tokens, cfg.max_new_tokens)
        log(f"check: ONNX fp32 greedy vs torch generate on the probe ({check_tokens} tokens)")
        # EOS is held off for the whole check: a model that ends at once on the probe
        # would otherwise compare one token and never run decoder_step (nor int8's).
        ref_in, ref_out = reference_generate(model, tok, probe_text, cfg, check_tokens,
                                             min_new_tokens=check_tokens)
        onnx32 = Seq2SeqSummariser.from_folder(fp32, threads=threads)
        our_in = onnx32.encode(probe_text)
        if our_in != ref_in:
            raise ModelBuildError(
                "the exported tokenizer.json does not encode like the model's tokenizer"
            )
        ours = onnx32.generate_ids(our_in, check_tokens, min_new_tokens=check_tokens)
        if ours != ref_out:
            raise ModelBuildError(
                f"ONNX greedy output differs from torch generate: {ours[:16]} vs {ref_out[:16]}"
            )
        check: dict[str, Any] = {"probe_tokens": len(ref_out), "fp32_equal": True}
        final = fp32
        if quantise:
            q = tmp / "int8"
            q.mkdir()
            log("quantising to int8 (dynamic, per-channel)")
            for name in (ENCODER_FILE, DECODER_INIT_FILE, DECODER_STEP_FILE):
                _quantise(fp32 / name, q / name)
            for name in (TOKENIZER_FILE, CONFIG_FILE):
                shutil.copy2(fp32 / name, q / name)
            int8_out = Seq2SeqSummariser.from_folder(q, threads=threads).generate_ids(
                our_in, check_tokens, min_new_tokens=check_tokens
            )
            check["int8_agreement"] = round(_agreement(int8_out, ref_out), 4)
            log(f"int8 greedy agrees with fp32 on {check['int8_agreement']:.0%} of the probe")
            final = q
        folder.mkdir(parents=True, exist_ok=True)
        # The old record goes first: a crash mid-move leaves "not built", never a mix.
        manifest = Manifest(models_dir)
        _forget(manifest)
        for name in (SEQ2SEQ.file, *SEQ2SEQ.extra_files):
            shutil.move(str(final / name), str(folder / name))
    meta: dict[str, Any] = {
        "recipe": RECIPE,
        "config": json.loads(cfg.to_json()),
        "source": str(src.resolve()),
        "source_sha256": {
            p.name: sha256_file(p) for p in sorted(src.iterdir())
            if p.is_file() and p.suffix in (".safetensors", ".bin")
        },
        "versions": _versions(),
        "check": check,
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    manifest.record_files(SEQ2SEQ, meta)
    log(f"seq2seq summariser installed in {folder}")
    return meta


def _forget(manifest: Manifest) -> None:
    manifest.remove(SEQ2SEQ.name)
