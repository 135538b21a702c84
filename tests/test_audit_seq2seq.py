"""Audit of the bring-your-own seq2seq summariser: the guard's facts, the export's errors
and check, and the input of long stories.

The guard tests need no model (only ``summary_from_text``); the export tests use the tiny
randomly initialised models of ``test_seq2seq``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from test_seq2seq import ARTICLES, _tokenizer, export, make_tiny_model

from storyline.models.errors import ModelBuildError
from storyline.models.seq2seq import SEQ2SEQ, Seq2SeqConfig, Seq2SeqSummariser, greedy_next
from storyline.models.types import Article


def _guard_only(embedder: Any = None) -> Seq2SeqSummariser:
    """A summariser for ``summary_from_text`` alone: the guard reads no graph."""
    s = Seq2SeqSummariser.__new__(Seq2SeqSummariser)
    s._embedder = embedder
    s.support_threshold = 0.5
    s.embed_threshold = 0.6
    return s


FACTS = [
    *ARTICLES,
    Article(
        "d",
        "The council approved 1,200 new buses for Smith's transit agency. "
        "The agency has two depots.",
        title="",
        published_at=datetime(2024, 5, 3, tzinfo=UTC),
    ),
]


@pytest.mark.parametrize("generated", [
    "The city council did not vote to expand the bus network.",  # negation added
    "The city council didn't vote to expand the bus network.",
    "The mayor said new routes would never open next spring.",
    "The city council voted on Friday to expand the bus network.",  # another day
    "The mayor said new routes would open next winter.",  # another season
    "The city council voted on Tuesday to expand the bus network by 40 routes.",  # number
    "Critics warned about costs and delays of the bus plan in 2019.",
    "Mayor John Smith said new routes would open next spring.",  # invented names
    "The council approved 1,300 new buses for Smith's transit agency.",  # changed number
    "The council approved 1,200 new buses for Jones's transit agency.",  # changed name
    "The agency has three depots.",  # number word changed
    "The agency has ٣ depots.",  # Arabic-Indic 3
])
def test_guard_rejects_a_changed_fact(generated: str) -> None:
    summary = _guard_only().summary_from_text(FACTS, generated, budget_words=50)
    (only,) = summary.sentences
    assert only.origin == "extracted", generated  # the fallback: nothing generated passed


@pytest.mark.parametrize(("generated", "cited"), [
    ("The city council voted on Tuesday to expand the bus network.", ("a",)),
    ("The City Council voted on TUESDAY to expand the bus network.", ("a",)),  # casing
    ("The council approved 1200 new buses for Smith\u2019s transit agency.", ("d",)),
    ("The council approved \uff11,\uff12\uff10\uff10 new buses for SMITH's agency.", ("d",)),
    ("The agency has 2 depots.", ("d",)),  # number words and digits alike
    ("The agency has \u0662 depots.", ("d",)),
    ("Two depots belong to the agency.", ("d",)),
    ("However, critics warned about costs and delays of the plan.", ("b",)),
])
def test_guard_keeps_a_fact_in_another_form(generated: str, cited: tuple[str, ...]) -> None:
    summary = _guard_only().summary_from_text(FACTS, generated, budget_words=50)
    (only,) = summary.sentences
    assert (only.origin, only.article_ids) == ("fused", cited), generated


def test_an_article_is_cited_only_where_it_states_the_facts() -> None:
    arts = [
        Article("a", "The council voted on Tuesday to expand the bus network.", title=""),
        Article("b", "The council voted on Tuesday to expand the bus network by 40 routes.",
                title=""),
    ]
    text = "The council voted on Tuesday to expand the bus network by 40 routes."
    (only,) = _guard_only().summary_from_text(arts, text, budget_words=50).sentences
    assert only.article_ids == ("b",)  # "a" has no 40


class _SameVector:
    """Every text the same vector: cosine 1, so only the fact check can refuse."""

    dim = 4
    model_id = "same"

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.tile(np.asarray([1, 0, 0, 0], dtype=np.float32), (len(texts), 1))


def test_embedding_support_does_not_bypass_the_facts() -> None:
    s = _guard_only(_SameVector())
    ok = s.summary_from_text(ARTICLES, "Riders said buses ran late all week.", budget_words=50)
    assert ok.sentences[0].origin == "fused"  # cosine alone still counts
    for text in ("The council did not expand the bus network.",
                 "Aliens landed at Heathrow on Friday."):
        summary = s.summary_from_text(ARTICLES, text, budget_words=50)
        assert summary.sentences[0].origin == "extracted", text


def test_min_new_tokens_matches_hugging_face() -> None:
    import torch
    from transformers.generation.logits_process import MinNewTokensLengthLogitsProcessor

    cfg = Seq2SeqConfig(decoder_start_token_id=0, eos_token_ids=(1, 3), pad_token_id=0,
                        num_layers=1)
    proc = MinNewTokensLengthLogitsProcessor(1, 4, [1, 3])
    rng = np.random.default_rng(5)
    for n in range(8):
        seq = [0, *rng.integers(4, 8, size=n).tolist()]
        logits = rng.normal(size=8).astype(np.float32)
        logits[1] = logits[3] = 10.0  # EOS would win unless held off
        ref = proc(torch.tensor([seq]), torch.tensor(logits[None, :]))
        assert greedy_next(logits, seq, cfg, min_new_tokens=4) == int(torch.argmax(ref[0]))


# -- export ------------------------------------------------------------------------------
def test_export_without_tokenizer_files_says_so(tmp_path: Path) -> None:
    from storyline.models.seq2seq_build import export_seq2seq

    make_tiny_model(tmp_path / "src", "bart")
    for p in (tmp_path / "src").iterdir():
        if "token" in p.name or p.name == "special_tokens_map.json":
            p.unlink()
    with pytest.raises(ModelBuildError, match=r"tokenizer.*no tokenizer\.json"):
        export_seq2seq(tmp_path / "src", tmp_path / "models", log=lambda _: None)
    assert not (tmp_path / "models" / "manifest.json").exists()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BART exported fp32: the data dir."""
    root = tmp_path_factory.mktemp("audit-bart")
    make_tiny_model(root / "src", "bart")
    export(root / "src", root / "data", "--no-quantise")
    return root / "data"


@pytest.mark.slow
def test_unsupported_architecture_is_refused_clearly_and_keeps_the_install(
    installed: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import ProphetNetConfig, ProphetNetForConditionalGeneration

    from storyline.models.seq2seq_build import export_seq2seq

    torch.manual_seed(0)
    tok = _tokenizer()
    ProphetNetForConditionalGeneration(ProphetNetConfig(
        vocab_size=len(tok), hidden_size=32, encoder_ffn_dim=64, decoder_ffn_dim=64,
        num_encoder_layers=1, num_decoder_layers=1, num_encoder_attention_heads=2,
        num_decoder_attention_heads=2, max_position_embeddings=64, pad_token_id=0,
        eos_token_id=1, bos_token_id=2, decoder_start_token_id=1,
    )).save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    models = tmp_path / "models"
    shutil.copytree(installed / "models", models)
    before = json.loads((models / "manifest.json").read_text())[SEQ2SEQ.name]["files"]
    with pytest.raises(ModelBuildError, match=r"ProphetNet.*cannot export|cannot export.*"
                                              r"ProphetNet"):
        export_seq2seq(tmp_path / "src", models, quantise=False, log=lambda _: None)
    after = json.loads((models / "manifest.json").read_text())[SEQ2SEQ.name]["files"]
    assert after == before
    Seq2SeqSummariser(models)  # the old install still verifies
    assert sorted(p.name for p in models.iterdir()) == ["manifest.json", SEQ2SEQ.folder]


@pytest.mark.slow
def test_export_check_runs_the_cached_decoder_when_the_model_stops_at_once(
    tmp_path: Path,
) -> None:
    import torch
    from transformers import MBartConfig, MBartForConditionalGeneration

    torch.manual_seed(0)
    tok = _tokenizer()
    # With this seed the random mBART ends the probe at its first token, so the old check
    # compared one token and never ran decoder_step.
    MBartForConditionalGeneration(MBartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
        bos_token_id=2, decoder_start_token_id=1,
    )).save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    out = export(tmp_path / "src", tmp_path / "data", "--quantise")
    assert out["check"]["fp32_equal"] is True
    assert out["check"]["probe_tokens"] == 48  # min(check_tokens, max_new_tokens)


@pytest.mark.slow
def test_every_article_of_a_long_story_reaches_the_encoder(installed: Path) -> None:
    summariser = Seq2SeqSummariser(installed / "models")
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    story = [
        Article(f"x{i}", ARTICLES[i % 3].text, title=ARTICLES[i % 3].title,
                published_at=t0 + timedelta(hours=i))
        for i in range(6)
    ]
    text = summariser.input_text(story)
    # Untruncated, so the newest article is in the input too.
    assert len(summariser.encode(text)) < summariser.config.max_input_tokens
    assert text.count("\n\n") == len(story) - 1
    summary = summariser.summarise(story, budget_words=30)
    assert summary.sentences
    assert all(set(s.article_ids) <= {a.id for a in story} for s in summary.sentences)


@pytest.mark.parametrize("generated", [
    # no EOS and no sentence end: the loop ran to the token cap (72 words for a budget of 30)
    "the city council voted to expand the bus network " * 8,
    "The city council voted to expand the bus network, the city council voted to expand "
    "the bus network, the city council voted to expand the bus network.",
])
def test_a_decoding_loop_is_not_a_summary_sentence(generated: str) -> None:
    summary = _guard_only().summary_from_text(ARTICLES, generated.strip(), budget_words=30)
    (only,) = summary.sentences
    assert only.origin == "extracted"
    assert summary.word_count <= 30


def test_a_sentence_that_merely_reuses_words_is_kept() -> None:
    text = "The city council voted on Tuesday to expand the bus network for the city."
    (only,) = _guard_only().summary_from_text(ARTICLES, text, budget_words=30).sentences
    assert only.origin == "fused" and only.article_ids == ("a",)
