"""Runtime abstractive summariser: an exported seq2seq model on onnxruntime (no torch).

Plug-in point for a user's own model: ``storyline models export-seq2seq SRC`` turns a local
Hugging Face seq2seq folder (BART, T5, PEGASUS, ... anything ``AutoModelForSeq2SeqLM``
loads) into three ONNX graphs plus ``tokenizer.json`` and ``seq2seq.json`` under
``<models_dir>/seq2seq/``, recorded in the manifest with their sha256
(``storyline.models.seq2seq_build``). This module only reads them:

- ``encoder.onnx``: ``input_ids``, ``attention_mask`` -> ``last_hidden_state``;
- ``decoder_init.onnx``: the first decoder step (decoder start token, encoder states)
  -> ``logits`` of the next token, the self-attention key/values of that step and the
  cross-attention key/values, which every later step reuses;
- ``decoder_step.onnx``: one token plus the cached key/values -> ``logits`` and the
  self-attention key/values grown by one. Decoding is linear in the output length.

For one story:

1. Input: member articles in chronological order (unknown times last, then input order),
   each as its title and its leading words, an equal share of the model's input length
   per article (title included), joined by blank lines; ``prefix`` (e.g. T5's
   ``"summarize: "``) first.
2. Greedy decoding (argmax) up to ``max_new_tokens(budget_words)`` tokens, with the
   model's own forced first token and no-repeat-n-gram rule when it has them; exactly
   ``generate(do_sample=False, num_beams=1)`` with those settings (checked by the build).
3. The text is split with the extractive summariser's sentence splitter; a cut-off last
   piece (no terminal punctuation) is dropped when a complete sentence precedes it.
4. Guard and citations: a generated sentence cites every article holding a sentence, or a
   pair of neighbouring sentences (a generated sentence often fuses two), that supports
   it: at least ``support_threshold`` of its content words (stemmed) occur there; with an
   ``embedder``, a cosine of at least ``embed_threshold`` to one source sentence also
   counts. A source supports it only when negated exactly when the sentence is, and the
   sentence's facts must be stated there too: its numbers (any script's digits, thousands
   commas or number words alike), its capitalised words and date words (caseless,
   possessive ``'s`` ignored; a sentence's first word only when it is no function word).
   The articles whose supporting source states every fact are cited; when none does, a
   sentence whose facts the supporting sources state together (a fusion) cites them all;
   else it is unsupported. Overlap alone let "did not vote" pass for "voted", or "Friday"
   for "Tuesday". Best-supported article first. A sentence no article supports is
   dropped, and so is a repeat, one under ``MIN_WORDS`` words, or one that repeats a run
   of ``LOOP_NGRAM`` words (a decoding loop). Sentences are kept whole: selection stops
   at the budget, and the last one may cross it when at least half of its words fit (as
   in the extractive summariser). If no generated sentence survives, the summary
   is the earliest article's lead sentence, extracted (``origin="extracted"``), under
   that article's title: a summary never says what no article says.
5. Headline of a generated summary: the member title sharing the most content words with
   it (the first such title on ties; the first summary sentence when there is no title).

Output: ``Summary(mode="abstractive")`` whose sentences have ``origin="fused"``
(generated, passed the guard) or ``"extracted"`` (fallback).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.protocols import Embedder
from storyline.models.registry import Manifest, ModelSpec
from storyline.models.summariser import normalise_ws, split_sentences, usable_articles
from storyline.models.types import Article, Summary, SummarySentence, published_ts
from storyline.models.words import count_words

__all__ = [
    "CONFIG_FILE",
    "DECODER_INIT_FILE",
    "DECODER_STEP_FILE",
    "ENCODER_FILE",
    "SEQ2SEQ",
    "TOKENIZER_FILE",
    "Seq2SeqConfig",
    "Seq2SeqSummariser",
    "content_words",
    "greedy_next",
    "past_names",
]

ENCODER_FILE: Final = "encoder.onnx"
DECODER_INIT_FILE: Final = "decoder_init.onnx"
DECODER_STEP_FILE: Final = "decoder_step.onnx"
TOKENIZER_FILE: Final = "tokenizer.json"
CONFIG_FILE: Final = "seq2seq.json"

#: The registry entry of an exported seq2seq model (one slot: a new export replaces it).
#: ``dim`` is unused for a generator (0); the actual quantisation is in ``seq2seq.json``.
SEQ2SEQ = ModelSpec(
    name="seq2seq-summariser",
    folder="seq2seq",
    file=ENCODER_FILE,
    dim=0,
    quantisation="int8 dynamic per-channel, or fp32 with --no-quantise (see seq2seq.json)",
    source_package="a local Hugging Face seq2seq folder (storyline models export-seq2seq)",
    description="User-supplied abstractive summariser: encoder + cached decoder, greedy.",
    extra_files=(DECODER_INIT_FILE, DECODER_STEP_FILE, TOKENIZER_FILE, CONFIG_FILE),
    # `models build` never makes this one: it is the user's model, exported on request
    build_command="storyline models export-seq2seq SRC",
    rebuild_command="storyline models export-seq2seq SRC",
)

#: Shorter generated sentences are dropped: with one or two content words, lexical support
#: means nothing (the extractive summariser's minimum too).
MIN_WORDS: Final = 4
#: Output tokens per word assumed when turning a word budget into a token limit
#: (subword vocabularies: ~1.3 tokens per English word), with headroom for punctuation.
TOKENS_PER_WORD: Final = 1.6

_WORD = re.compile(r"\w+", re.UNICODE)
# Function words never count as support on their own.
_STOP_WORDS: Final = """
    a an the and or but if of to in on at by for with from as is are was were be been being
    it its this that these those he she they them his her their we our you your i me my
    not no so than then there here has have had do does did will would can could should
    may might must said says say also about into over after before more most other some
    such only own same very just who whom which what when where why how all any both each
    few up down out off again further once while"""
_STOP: Final = frozenset(_STOP_WORDS.split())


def _stem(w: str) -> str:
    for suf in ("ing", "ed", "es", "s"):
        if len(w) > len(suf) + 2 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def content_words(text: str) -> set[str]:
    """Lower-cased, crudely stemmed words of ``text`` without function words."""
    return {_stem(w) for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP}


# -- facts a supporting source must state too ---------------------------------------------
# Word overlap alone lets "did not vote" pass for "voted", "on Friday" for "on Tuesday", or
# an invented name or number in an otherwise copied sentence (the function words and one
# changed word of many are below any overlap threshold).
_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:st|nd|rd|th)?")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+")
_NUMBER_WORDS: Final = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40",
    "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "trillion": "1000000000000", "dozen": "12", "first": "1st", "third": "3rd",
    "fourth": "4th", "fifth": "5th", "sixth": "6th", "seventh": "7th", "eighth": "8th",
    "ninth": "9th", "tenth": "10th",
}
# Lower-case date words (capitalised ones are checked as names); not "may" / "march".
_DATE_WORDS_TEXT = """
    monday tuesday wednesday thursday friday saturday sunday january february april june
    july august september october november december today yesterday tomorrow tonight
    spring summer autumn winter weekend"""
_DATE_WORDS: Final = frozenset(_DATE_WORDS_TEXT.split())
_NEGATION_TEXT = "not no never none nobody nothing neither nor without cannot"
_NEGATIONS: Final = frozenset(_NEGATION_TEXT.split())
# Capitalised only by position: the first word of a sentence need not be a name.
_OPENER_TEXT = """
    however meanwhile still yet although though despite instead later earlier now
    separately overall thus therefore since because until during under among many several
    one"""
_OPENERS: Final = _STOP | frozenset(_OPENER_TEXT.split())


def _token(word: str) -> str:
    """Caseless, NFKC, possessive-free form of a word ("Smith’s" -> "smith")."""
    w = unicodedata.normalize("NFKC", word).casefold().replace("’", "'")
    return w[:-2] if w.endswith("'s") else w


def _numbers(text: str) -> set[str]:
    """Canonical numbers: any script's digits as ASCII, no thousands commas, number words."""
    digits = "".join(
        str(unicodedata.decimal(c)) if c.isdecimal() else c
        for c in unicodedata.normalize("NFKC", text)
    )
    out = {
        m.replace(",", "") if _THOUSANDS.fullmatch(m) else m
        for m in _NUMBER.findall(digits)
    }
    out |= {_NUMBER_WORDS[t] for t in map(_token, _TOKEN.findall(text)) if t in _NUMBER_WORDS}
    return out


def _negated(tokens: Sequence[str]) -> bool:
    return any(t in _NEGATIONS or t.endswith("n't") for t in tokens)


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a text states beyond its content words."""

    tokens: frozenset[str]
    numbers: frozenset[str]
    #: names (capitalised words) and date words: every one must be in the source too
    names: frozenset[str]
    negated: bool

    @classmethod
    def of(cls, text: str) -> _Facts:
        raw = _TOKEN.findall(text)
        toks = [_token(w) for w in raw]
        names = {
            t for k, (w, t) in enumerate(zip(raw, toks, strict=True))
            if (any(c.isupper() for c in w) and not (k == 0 and t in _OPENERS)
                and t not in _NUMBER_WORDS)  # "Two" is checked as the number 2
            or t in _DATE_WORDS
        }
        return cls(frozenset(toks), frozenset(_numbers(text)), frozenset(names),
                   _negated(toks))

    @classmethod
    def union(cls, many: Iterable[_Facts]) -> _Facts:
        items = list(many)
        return cls(
            frozenset().union(*(f.tokens for f in items)),
            frozenset().union(*(f.numbers for f in items)),
            frozenset().union(*(f.names for f in items)),
            any(f.negated for f in items),
        )

    def stated_by(self, source: _Facts) -> bool:
        """``source`` states every number, name and date of this text (negation apart)."""
        return self.numbers <= source.numbers and self.names <= source.tokens


@dataclass(frozen=True, slots=True)
class Seq2SeqConfig:
    """``seq2seq.json``: what the runtime needs to drive the exported graphs.

    Written by the export from the source model's config and generation config; covered by
    the manifest's sha256 like the graphs.
    """

    decoder_start_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    num_layers: int
    #: token forced as the first generated one (BART), or -1
    forced_bos_token_id: int = -1
    #: no n-gram of this size is generated twice (0 = off)
    no_repeat_ngram_size: int = 0
    #: encoder input length (tokens, special tokens included)
    max_input_tokens: int = 512
    #: hard cap on generated tokens whatever the budget
    max_new_tokens: int = 256
    #: prepended to the input text (T5: "summarize: ")
    prefix: str = ""
    #: "int8" or "fp32"
    quantisation: str = "fp32"
    #: the source folder's name (information only)
    source: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> Seq2SeqConfig:
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {
            "decoder_start_token_id", "eos_token_ids", "pad_token_id", "num_layers"
        } <= set(data):
            raise ModelUnavailable(f"{CONFIG_FILE} lacks required fields")
        data = {k: v for k, v in data.items() if k in known}
        data["eos_token_ids"] = tuple(int(x) for x in data["eos_token_ids"])
        return cls(**data)


def past_names(num_layers: int, prefix: str, *, cross: bool = True) -> list[str]:
    """Graph input/output names of the key/value cache, layer by layer.

    ``prefix`` is ``past`` (inputs) or ``present`` (outputs); per layer the self-attention
    key and value, then (``cross``) the cross-attention key and value.
    """
    kinds = ("self_key", "self_value", "cross_key", "cross_value") if cross else (
        "self_key", "self_value")
    return [f"{prefix}.{layer}.{kind}" for layer in range(num_layers) for kind in kinds]


def greedy_next(
    logits: npt.NDArray[np.float32], generated: Sequence[int], cfg: Seq2SeqConfig,
    *, min_new_tokens: int = 0,
) -> int:
    """The next token of greedy decoding, after the forced-BOS and no-repeat rules.

    ``generated`` holds the decoder input so far, decoder start token included (as the
    ``input_ids`` that Hugging Face's logits processors see). ``min_new_tokens``: no EOS
    before that many tokens (``generate(min_new_tokens=...)``; the export's check uses it).
    """
    if len(generated) == 1 and cfg.forced_bos_token_id >= 0:
        return cfg.forced_bos_token_id
    scores = np.asarray(logits, dtype=np.float32).reshape(-1)
    if len(generated) - 1 < min_new_tokens:
        scores = scores.copy()
        scores[list(cfg.eos_token_ids)] = -np.inf
    n = cfg.no_repeat_ngram_size
    if n > 0 and len(generated) + 1 >= n:
        seq = list(generated)
        tail = tuple(seq[len(seq) - n + 1 :]) if n > 1 else ()
        banned = {
            seq[i + n - 1]
            for i in range(len(seq) - n + 1)
            if tuple(seq[i : i + n - 1]) == tail
        }
        if banned:
            scores = scores.copy()
            scores[list(banned)] = -np.inf
    return int(np.argmax(scores))  # first of ties, as torch.argmax


#: A sentence repeating a run of this many words is a greedy-decoding loop: without a
#: no-repeat rule a model can cycle until the token cap, and every word of the loop is
#: supported, so the guard alone kept the whole run (far over the budget) as one sentence.
LOOP_NGRAM: Final = 4


def _loops(text: str) -> bool:
    words = [w.casefold() for w in _WORD.findall(text)]
    grams = list(zip(*(words[i:] for i in range(LOOP_NGRAM)), strict=False))
    return len(grams) != len(set(grams))


@dataclass(frozen=True, slots=True)
class _Source:
    article: int
    text: str
    words: frozenset[str]
    facts: _Facts


class Seq2SeqSummariser:
    """Abstractive summariser over an exported seq2seq model (implements ``Summariser``).

    ``models_dir``: where ``storyline models export-seq2seq`` put it (checked against the
    manifest's sha256). ``embedder``: optional; when given, a cosine of at least
    ``embed_threshold`` between a generated sentence and a source sentence also counts as
    support. ``support_threshold``: fraction of a generated sentence's content words one
    source sentence must hold to support it.
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        threads: int = 2,
        embedder: Embedder | None = None,
        support_threshold: float = 0.5,
        embed_threshold: float = 0.6,
    ) -> None:
        folder = Manifest(models_dir).verify(SEQ2SEQ)
        self._init(folder, threads, embedder, support_threshold, embed_threshold)

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        *,
        threads: int = 2,
        embedder: Embedder | None = None,
        support_threshold: float = 0.5,
        embed_threshold: float = 0.6,
    ) -> Seq2SeqSummariser:
        """Load an unregistered export (the export's own check uses this); no sha256 check."""
        self = cls.__new__(cls)
        self._init(folder, threads, embedder, support_threshold, embed_threshold)
        return self

    def _init(
        self,
        folder: Path,
        threads: int,
        embedder: Embedder | None,
        support_threshold: float,
        embed_threshold: float,
    ) -> None:
        if threads < 1:
            raise InvalidInput("threads must be >= 1")
        if not 0.0 <= support_threshold <= 1.0:
            raise InvalidInput("support_threshold must be in [0, 1]")
        from storyline.models.embedder import make_session

        try:
            self.config = Seq2SeqConfig.from_json((folder / CONFIG_FILE).read_text("utf-8"))
            self._encoder = make_session(folder / ENCODER_FILE, threads)
            self._decoder_init = make_session(folder / DECODER_INIT_FILE, threads)
            self._decoder_step = make_session(folder / DECODER_STEP_FILE, threads)
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except ModelUnavailable:
            raise
        except Exception as exc:  # onnxruntime / tokenizers / json raise their own types
            raise ModelUnavailable(
                f"cannot load the seq2seq summariser from {folder}: {exc}"
            ) from exc
        tok.enable_truncation(max_length=self.config.max_input_tokens)
        tok.no_padding()
        self._tokenizer = tok
        self._past = past_names(self.config.num_layers, "past")
        self._present_init = past_names(self.config.num_layers, "present")
        self._present_step = past_names(self.config.num_layers, "present", cross=False)
        self._embedder = embedder
        self.support_threshold = support_threshold
        self.embed_threshold = embed_threshold

    # -- generation ---------------------------------------------------------------------
    def max_new_tokens(self, budget_words: int) -> int:
        """Token limit for a word budget: headroom for one sentence over it, capped."""
        want = math.ceil((budget_words + 30) * TOKENS_PER_WORD)
        return max(1, min(self.config.max_new_tokens, want))

    def encode(self, text: str) -> list[int]:
        """Encoder input ids of ``text`` (prefix added, truncated, special tokens added)."""
        return list(self._tokenizer.encode(self.config.prefix + text).ids)

    def generate_ids(
        self, input_ids: Sequence[int], max_new_tokens: int, *, min_new_tokens: int = 0
    ) -> list[int]:
        """Greedy output ids (decoder start token excluded, final EOS kept if produced)."""
        if not input_ids:
            raise InvalidInput("the encoder input is empty")
        if max_new_tokens < 1:
            raise InvalidInput("max_new_tokens must be >= 1")
        cfg = self.config
        ids = np.asarray([list(input_ids)], dtype=np.int64)
        mask = np.ones_like(ids)
        try:
            (hidden,) = self._encoder.run(["last_hidden_state"], {
                "input_ids": ids, "attention_mask": mask})
            seq = [cfg.decoder_start_token_id]
            outs = self._decoder_init.run(["logits", *self._present_init], {
                "decoder_input_ids": np.asarray([[seq[0]]], dtype=np.int64),
                "encoder_hidden_states": hidden,
                "encoder_attention_mask": mask,
            })
            logits = outs[0]
            past = dict(zip(self._past, outs[1:], strict=True))
            eos = set(cfg.eos_token_ids)
            while True:
                nxt = greedy_next(logits[0], seq, cfg, min_new_tokens=min_new_tokens)
                seq.append(nxt)
                if nxt in eos or len(seq) - 1 >= max_new_tokens:
                    break
                feeds: dict[str, Any] = {
                    "decoder_input_ids": np.asarray([[nxt]], dtype=np.int64),
                    "encoder_attention_mask": mask,
                    **past,
                }
                outs = self._decoder_step.run(["logits", *self._present_step], feeds)
                logits = outs[0]
                # The step returns the grown self-attention cache; cross-attention is fixed.
                for name, value in zip(self._present_step, outs[1:], strict=True):
                    past[name.replace("present.", "past.", 1)] = value
        except InvalidInput:
            raise
        except Exception as exc:  # onnxruntime raises untyped errors
            raise ModelUnavailable(f"seq2seq inference failed: {exc}") from exc
        return seq[1:]

    def decode(self, ids: Sequence[int]) -> str:
        return normalise_ws(str(self._tokenizer.decode(list(ids), skip_special_tokens=True)))

    def input_text(self, articles: Sequence[Article]) -> str:
        """The single input text of a story (see the module docstring, step 1)."""
        arts = sorted(
            enumerate(articles), key=lambda t: (published_ts(t[1]), t[0])
        )
        # Word share per article, title included; tokens >= words, the tokenizer truncates
        # the rest. No larger floor: with many articles it overfilled the input and the
        # truncation dropped the newest articles whole.
        share = max(1, int(self.config.max_input_tokens * 0.7) // max(1, len(arts)))
        parts = []
        for _, a in arts:
            title = a.title.split()[:share]
            head = " ".join(title)
            body = " ".join(a.text.split()[: share - len(title)])
            parts.append(f"{head}\n{body}" if head and body else head or body)
        return "\n\n".join(parts)

    # -- Summariser ---------------------------------------------------------------------
    def summarise(self, articles: Sequence[Article], budget_words: int = 80) -> Summary:
        if isinstance(budget_words, bool) or not isinstance(budget_words, int):
            raise InvalidInput("budget_words must be an integer")
        if budget_words < 1:
            raise InvalidInput("budget_words must be >= 1")
        arts = usable_articles(articles)
        ids = self.generate_ids(
            self.encode(self.input_text(arts)), self.max_new_tokens(budget_words)
        )
        return self.summary_from_text(arts, self.decode(ids), budget_words)

    def summary_from_text(
        self, articles: Sequence[Article], generated: str, budget_words: int
    ) -> Summary:
        """Guard, cite and fit generated text to the budget (steps 3-5 of the docstring)."""
        arts = usable_articles(articles)
        sources = self._sources(arts)
        pieces = [
            (text, complete)
            for s, e, complete in split_sentences(generated)
            if (text := normalise_ws(generated[s:e]))
        ]
        if len(pieces) > 1 and not pieces[-1][1]:
            pieces = pieces[:-1]  # cut off by the token limit
        cited = self._cite([t for t, _ in pieces], sources, arts)
        out: list[SummarySentence] = []
        words = 0
        seen: set[str] = set()
        for (text, _), ids in zip(pieces, cited, strict=True):
            key = text.casefold()
            n = count_words(text)
            if not ids or key in seen or n < MIN_WORDS or _loops(text):
                continue  # unsupported (the guard), a repeat, too short, or a decoding loop
            if out and words >= budget_words:
                break
            if out and words + n > budget_words and (budget_words - words) < n / 2:
                break  # less than half of it would fit: stop before it
            seen.add(key)
            out.append(SummarySentence(text=text, article_ids=tuple(ids), origin="fused"))
            words += n
        if not out:
            first = min(range(len(arts)), key=lambda i: (published_ts(arts[i]), i))
            out = [self._fallback(arts[first])]
            if arts[first].title.strip():
                headline = normalise_ws(arts[first].title)
                return Summary(headline=headline, sentences=tuple(out), mode="abstractive")
        return Summary(
            headline=self._headline(arts, out), sentences=tuple(out), mode="abstractive"
        )

    # -- internals ----------------------------------------------------------------------
    @staticmethod
    def _sources(arts: Sequence[Article]) -> list[_Source]:
        out = []
        for ai, a in enumerate(arts):
            sents = [t for s, e, _ in split_sentences(a.text) if (t := normalise_ws(a.text[s:e]))]
            # A generated sentence often fuses two neighbouring ones: pairs count too.
            texts = [normalise_ws(a.title)] if a.title.strip() else []
            texts += sents + [f"{x} {y}" for x, y in itertools.pairwise(sents)]
            out += [_Source(ai, t, frozenset(content_words(t)), _Facts.of(t))
                    for t in texts if t]
        return out

    def _cite(
        self, sentences: Sequence[str], sources: Sequence[_Source], arts: Sequence[Article]
    ) -> list[list[str]]:
        """Per sentence: ids of the supporting articles, best support first."""
        sims: npt.NDArray[np.float32] | None = None
        if self._embedder is not None and sentences and sources:
            vecs = self._embedder.embed([*sentences, *(s.text for s in sources)])
            sims = vecs[: len(sentences)] @ vecs[len(sentences) :].T
        out: list[list[str]] = []
        for k, text in enumerate(sentences):
            words = content_words(text)
            facts = _Facts.of(text)
            support: list[tuple[_Source, float]] = []
            for j, src in enumerate(sources):
                if facts.negated != src.facts.negated:
                    continue  # "did not vote" is no support for "voted", nor the reverse
                lex = len(words & src.words) / len(words) if words else 0.0
                ok = bool(words) and lex >= self.support_threshold
                emb = float(sims[k, j]) if sims is not None else -1.0
                if ok or emb >= self.embed_threshold:
                    support.append((src, max(lex, emb)))
            # Sources that state every fact are the ones cited; a sentence fusing facts of
            # several supporting sources cites them all; a fact none of them states (an
            # invented number, name or date) leaves it unsupported.
            full = [(src, v) for src, v in support if facts.stated_by(src.facts)]
            if not full and not facts.stated_by(_Facts.union(src.facts for src, _ in support)):
                support = []
            best: dict[int, float] = {}
            for src, v in full or support:
                best[src.article] = max(best.get(src.article, -1.0), v)
            order = sorted(best, key=lambda a: (-best[a], a))
            out.append([arts[a].id for a in order])
        return out

    @staticmethod
    def _fallback(art: Article) -> SummarySentence:
        spans = split_sentences(art.text)
        text = next(
            (t for s, e, _ in spans if (t := normalise_ws(art.text[s:e]))), normalise_ws(art.text)
        )
        return SummarySentence(text=text, article_ids=(art.id,), origin="extracted")

    @staticmethod
    def _headline(arts: Sequence[Article], sentences: Sequence[SummarySentence]) -> str:
        titled = [a for a in arts if a.title.strip()]
        if not titled:
            return sentences[0].text
        words = content_words(" ".join(s.text for s in sentences))
        best = max(titled, key=lambda a: len(content_words(a.title) & words))  # first of ties
        return normalise_ws(best.title)
