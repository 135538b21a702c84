"""Runtime per-story extractive summariser: MiniLM + n-gram features -> ONNX scorer -> MMR.

No torch here: onnxruntime, tokenizers (via the embedder) and numpy only. For one story:

1. ``split_sentences``: a fast, deterministic rule splitter (abbreviations such as "Mr.",
   "Nov. 8" and "U.S.", initials, quotations kept whole). It ends a sentence at
   ``. ! ? …`` followed by whitespace, and at the CJK ``。！？．``, the Devanagari danda
   ``। ॥`` and the Arabic/Urdu ``؟ ۔`` with or without whitespace; the next character must
   be able to start a sentence: an uppercase letter, a digit, an opening quote/bracket, or
   a letter of a caseless script (CJK, Arabic, Devanagari...). A lowercase letter never
   starts one, so English whose sentences start lowercase stays one piece (see 1b). A
   piece without terminal punctuation is *incomplete*: the cut-off end of an excerpt (86%
   of AllSides excerpts), a heading, a byline. Incomplete sentences are never extracted
   unless a story has nothing else, but they still count as evidence when other sentences
   look for support.
1b. ``story_sentences``: a piece over ``MAX_PIECE_WORDS`` words or ``MAX_PIECE_CHARS``
   characters (a run-on text without usable punctuation) is no sentence a summary can use
   whole. It is cut at the best boundaries it has (terminals the splitter rejected, then
   ``; :``, then ``,`` and dashes, then word windows, then character windows for text
   without spaces) into pieces under both caps; those pieces are incomplete, so they are
   only used when the story has no complete sentence (see the budget rule).
2. Every sentence and title is embedded once (MiniLM int8). Two feature sets, both shared
   with training so they cannot drift:
   - ``story_features`` per candidate sentence: similarity to the story centroid,
     cross-outlet support (max / mean cosine to the sentences of *other* articles),
     lexical support, title similarity, position, length, numbers, names, quotes, lean.
   - ``story_concepts`` per unigram / bigram g of the story and k <= 4: document
     frequency across articles, title presence, earliest position, centrality and support
     of the sentences holding it, capitalisation, quoting, and a lexical prior learned on
     train (how often such a gram reappears in a neutral reference).
3. ``scorer.onnx`` has two heads: a sentence score (small MLP) and, per (g, k), the
   probability that a neutral summary of the story holds g at least k times. Its
   selection parameters and the lexical prior travel in the ONNX metadata, so the
   manifest's sha256 covers them.
4. Greedy MMR under the budget: relevance = expected number of *new* matched n-grams per
   word (coverage, hence redundancy, counted the way ROUGE clips counts), optionally mixed
   with the sentence score (``mu``) and an embedding-similarity penalty (``mmr_lambda``);
   near-copies (cosine >= ``max_redundancy``) are never added twice. With ``beam`` > 0 a
   beam search over sentence sets then looks for a set with more expected matches in the
   text as read (ordered, cut at the budget); the greedy set competes, so it only helps.
5. Ordering: chronological by article ``published_at`` (unknown last), then article input
   order, then position in the article. Headline: the member title nearest the centroid.

Budget rule (the contract): sentences are kept whole and never cut. Selection stops once
the summary reaches ``budget_words``; the last sentence added may cross the budget, but
only if at least ``min_fit`` of its words fall inside it (otherwise shorter candidates are
tried). So a summary exceeds the budget by less than one sentence, and a caller that needs
a hard cap truncates at the budget (the evaluation does). If the only candidates are
complete sentences longer than the budget, the best one is returned whole. A story
without any complete sentence is summarised from incomplete pieces (excerpt ends,
headings, the cut pieces of 1b); those are never passed off as sentences: in reading
order each is cut at the words left in the budget, and "…" marks every cut end (a piece
that starts inside a longer sentence gets a leading "…", one that does not end in
terminal punctuation a trailing "…"), so a summary never silently ends mid-sentence and
never exceeds the budget. Without the marks, the text is still verbatim.

Citations: every sentence cites the article it was extracted from first (its text is a
verbatim, whitespace-normalised substring of that article), then every other article of
the story holding a sentence with cosine >= ``support_threshold`` to it.

Input handling: articles without text are skipped; none left (or no articles) ->
``InvalidInput``. Non-English text goes through the same path (MiniLM embeds anything;
splitting knows the terminals of 1), degraded but extractive and crash-free. Words are
whitespace-separated, except that each Han or kana character counts as one word against
``budget_words`` (``count_words``), so Chinese and Japanese summaries keep the budget. At
most 40 sentences (pieces) per article are considered, a complete sentence over 90 words
is only a last resort, and no piece exceeds ``MAX_PIECE_WORDS`` / ``MAX_PIECE_CHARS``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput, ModelUnavailable
from storyline.models.protocols import Embedder
from storyline.models.registry import SUMMARISER, Manifest
from storyline.models.types import Article, Summary, SummarySentence, published_ts
from storyline.models.words import BUDGET_WORD, count_words

__all__ = [
    "CONCEPT_FEATURE_NAMES",
    "DEFAULT_PARAMS",
    "FEATURE_NAMES",
    "KMAX",
    "ExtractiveSummariser",
    "PreparedStory",
    "Prior",
    "Scorer",
    "SelectionParams",
    "Sentence",
    "StoryConcepts",
    "choose_headline",
    "concept_tokens",
    "load_scorer",
    "normalise_ws",
    "order_key",
    "prepare_story",
    "select_sentences",
    "split_long",
    "split_sentences",
    "story_concepts",
    "story_features",
    "supporting_articles",
    "usable_articles",
]

F32 = npt.NDArray[np.float32]

#: Candidates per article are capped so a pathological 50k-word article costs bounded time;
#: news leads carry the story, so the first sentences are the ones worth scoring.
MAX_SENTENCES_PER_ARTICLE: Final = 40
#: A "sentence" longer than this (a run-on text without punctuation) is not a candidate
#: unless the story has nothing else.
MAX_SENTENCE_WORDS: Final = 90
#: A piece over either cap is cut (module doc, 1b). 120 words: the longest AllSides
#: sentence has 76 words (502 characters), candidates stop at MAX_SENTENCE_WORDS = 90, and
#: 120 is 1.5 times the default budget (80), so nothing real is cut while a run-on never
#: reaches a summary whole. 800 characters: ~120 English words, and the bound for scripts
#: without spaces (one "word"); MiniLM reads <= 256 word pieces of it anyway.
MAX_PIECE_WORDS: Final = 120
MAX_PIECE_CHARS: Final = 800
#: Sentences shorter than this ("Here's why.") say nothing on their own.
MIN_SENTENCE_WORDS: Final = 4
#: the beam search keeps a dense [candidates, grams] count table; above this many cells
#: (~20-article stories stay well below) a story keeps the greedy selection
MAX_BEAM_CELLS: Final = 4_000_000
#: prior feature rows remembered per scorer (~150 B each); the memo restarts when full
MAX_PRIOR_ROWS: Final = 200_000
#: characters of one sentence handed to the embedder (MiniLM reads <= 256 word pieces anyway)
MAX_EMBED_CHARS: Final = 1500

# --------------------------------------------------------------------------- sentences

# Never the end of a sentence (titles before a name).
_TITLES: Final = frozenset(
    [
        "mr", "mrs", "ms", "mx", "dr", "prof", "sen", "sens", "rep", "reps", "gov", "gen",
        "lt", "col", "capt", "cpt", "sgt", "maj", "adm", "cmdr", "rev", "fr", "mt", "ft",
        "pres", "supt", "det", "atty", "insp", "vs", "v"
    ]
)
# Not the end of a sentence when a number follows ("Nov. 8", "No. 2").
_BEFORE_NUMBER: Final = frozenset(
    [
        "no", "nos", "vol", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
        "oct", "nov", "dec"
    ]
)
# May end a sentence ("... in the U.S. The White House said"): split only before a word
# that usually starts a sentence.
_AMBIGUOUS: Final = frozenset(
    [
        "u.s", "u.k", "u.n", "e.u", "d.c", "a.m", "p.m", "inc", "corp", "co", "ltd", "llc",
        "etc", "al", "i.e", "e.g", "jr", "sr", "st"
    ]
)
_STARTERS: Final = frozenset(
    [
        "the", "a", "an", "he", "she", "it", "they", "we", "i", "you", "his", "her", "its",
        "their", "our", "my", "this", "that", "these", "those", "but", "and", "or", "so",
        "yet", "in", "on", "at", "for", "with", "after", "before", "when", "while", "if", "as",
        "since", "although", "though", "however", "meanwhile", "still", "now", "then", "there",
        "here", "some", "many", "most", "more", "several", "according", "officials", "police",
        "authorities", "critics", "supporters", "one", "two", "three", "both", "what", "why",
        "how", "who", "where", "also", "instead", "despite", "during", "under", "until"
    ]
)
_TERMINALS: Final = ".!?。！？．…।॥؟۔"
#: end a sentence with or without whitespace after them (CJK, Devanagari, Arabic/Urdu)
_UNSPACED_TERMINALS: Final = "。！？．।॥؟۔"
_CLOSERS: Final = "\"'”’)]»」』）"
_OPENERS: Final = "\"'“‘([«¿¡「『（《"
# The whitespace is optional in the pattern, but a match without it is only a boundary
# after an unspaced terminal (``_split_allowed``); for text without those the accepted
# matches are exactly those of the pattern with ``\s+``.
_BOUNDARY = re.compile(r"([.!?。！？．…।॥؟۔]+)([\"'”’)\]»」』）]*)(\s*)")
_PARA = re.compile(r"\n\s*\n|\r\n\s*\r\n|\n(?=\s*[“\"A-Z])")
# A line ending in a comma or in a word no heading, byline or sentence ends with runs on
# past its newline (hard-wrapped text: "according to\nDuke Energy, which said ..."):
# breaking there would pass the capitalised rest off as a whole sentence.
_RUNS_ON = re.compile(
    r"(?:,|(?<!\S)(?:a|an|the|of|to|by|and|or|but|nor|which|whose|than|was|were|is|are|been"
    r"|has|have|had|will|would|could|should|its|their|our|my|your))[ \t\r]*\Z"
)
_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"\d")
_CAP = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-zA-Z]+")
_INITIAL = re.compile(r"(?:^|[\s(])[A-Z]$")


def normalise_ws(text: str) -> str:
    """Collapse every whitespace run (newlines, NBSP) to one space."""
    return " ".join(text.split())


def _is_terminal(sentence: str) -> bool:
    s = sentence.rstrip().rstrip(_CLOSERS)
    return bool(s) and s[-1] in _TERMINALS and not s.endswith(("...", "…"))


def _caseless_letter(ch: str) -> bool:
    """A letter of a script without case (CJK, Arabic, Devanagari...): may start a sentence."""
    return ch.isalpha() and not ch.isupper() and not ch.islower()


class _Quotes:
    """Quote counts of a paragraph: in all of it, and in its head up to a position that only
    moves forward (boundaries come in order), so each boundary costs O(1) amortised, not a
    scan of the paragraph (a 150k-character run of short sentences)."""

    __slots__ = ("close", "open", "para", "pos", "straight", "total_close", "total_open",
                 "total_straight")

    def __init__(self, para: str) -> None:
        self.para, self.pos = para, 0
        self.open = self.close = self.straight = 0
        self.total_open, self.total_close = para.count("“"), para.count("”")
        self.total_straight = para.count('"')

    def advance(self, pos: int) -> None:
        head = self.para[self.pos : pos]
        self.open += head.count("“")
        self.close += head.count("”")
        self.straight += head.count('"')
        self.pos = pos


def _last_token(s: str, end: int) -> str:
    """``s[:end].split()[-1]`` (or "") without splitting the whole head."""
    j = end
    while j > 0 and s[j - 1].isspace():
        j -= 1
    i = j
    while i > 0 and not s[i - 1].isspace():
        i -= 1
    return s[i:j]


def _split_allowed(para: str, m: re.Match[str], quotes: _Quotes) -> bool:
    punct, closers = m.group(1), m.group(2)
    if not m.group(3) and not any(ch in _UNSPACED_TERMINALS for ch in punct):
        return False
    nxt_pos = m.end()
    if nxt_pos >= len(para):
        return False
    nxt = para[nxt_pos]
    if not (nxt.isupper() or nxt.isdigit() or nxt in _OPENERS or _caseless_letter(nxt)):
        return False
    if punct == "." and not closers:
        token = _last_token(para, m.start())
        tok = token.lstrip(_OPENERS).lower()
        tail = para[max(0, m.start() - 2) : m.start()]
        if _INITIAL.search(tail if len(tail) >= 2 else " " + tail):
            return False  # "John F. Kennedy"
        if tok in _TITLES or (tok in _BEFORE_NUMBER and nxt.isdigit()):
            return False
        if tok in _AMBIGUOUS or re.fullmatch(r"(?:[a-z]\.)+[a-z]", tok):
            word = _WORD.match(para, nxt_pos + (1 if nxt in _OPENERS else 0))
            return word is not None and word.group(0).lower() in _STARTERS
    # Inside an open quotation that closes later in the paragraph: one sentence.
    quotes.advance(m.end(2))
    opened = quotes.open - quotes.close
    if opened > 0 and quotes.total_close > quotes.close:
        return False
    # Straight quotes only when the paragraph has no curly ones (mixed styles confuse it).
    straight_open = quotes.total_open == 0 and quotes.straight % 2 == 1
    return not (straight_open and quotes.total_straight > quotes.straight)


def split_sentences(text: str) -> list[tuple[int, int, bool]]:
    """``(start, end, complete)`` character spans of the sentences of ``text``.

    Paragraph breaks always end a sentence; so does a single newline before a capital or
    a quote, unless the line it ends runs on (``_RUNS_ON``). ``complete`` is False for a
    piece without terminal punctuation (a cut-off excerpt end, a heading, a byline).
    """
    spans: list[tuple[int, int, bool]] = []
    pos = 0
    breaks = [m for m in _PARA.finditer(text)
              if m.group(0) != "\n" or not _RUNS_ON.search(text, max(0, m.start() - 32), m.start())]
    for para_m in [*breaks, None]:
        end = para_m.start() if para_m else len(text)
        para = text[pos:end]
        base = pos
        pos = para_m.end() if para_m else len(text)
        start = 0
        quotes = _Quotes(para)
        for m in _BOUNDARY.finditer(para):
            if _split_allowed(para, m, quotes):
                _add_span(spans, para, base, start, m.end(2))
                start = m.end()
        _add_span(spans, para, base, start, len(para))
    return spans


def _add_span(
    spans: list[tuple[int, int, bool]], para: str, base: int, start: int, end: int
) -> None:
    piece = para[start:end]
    stripped = piece.strip()
    if not stripped:
        return
    lead = len(piece) - len(piece.lstrip())
    s = base + start + lead
    spans.append((s, s + len(stripped), _is_terminal(stripped)))


# Cut points of an over-long piece, best first (module doc, 1b); a cut falls after the match.
_CUT_LEVELS: Final = (
    # terminals the splitter rejected (a lowercase next word, an abbreviation)
    re.compile(r"[.!?…।॥؟۔。！？．]+[\"'”’)\]»」』）]*(?=\s)|[。！？．।॥؟۔]+[”’」』）]*"),
    re.compile(r"[;:][\"'”’)\]»]*(?=\s)|[；：]"),
    re.compile(r",[\"'”’)\]»]*(?=\s)|[，、]|\s[—–-]{1,2}(?=\s)|[—–]"),
)


def _over_cap(text: str) -> bool:
    return len(text) > MAX_PIECE_CHARS or count_words(text) > MAX_PIECE_WORDS


def _strip_span(text: str, lo: int, hi: int) -> tuple[int, int] | None:
    while lo < hi and text[lo].isspace():
        lo += 1
    while hi > lo and text[hi - 1].isspace():
        hi -= 1
    return (lo, hi) if lo < hi else None


def _pack(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge neighbouring spans while the merged text stays under both caps."""
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        if out and not _over_cap(text[out[-1][0] : hi]):
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _windows(text: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """Last resort: runs of whole words under both caps; a word over the character cap
    (text without spaces) in character windows."""
    units: list[tuple[int, int]] = []
    for m in BUDGET_WORD.finditer(text, lo, hi):
        a, b = m.span()
        units += [(k, min(k + MAX_PIECE_CHARS, b)) for k in range(a, b, MAX_PIECE_CHARS)]
    return _pack(text, units)


def split_long(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` spans of ``text`` (whitespace-normalised) in order, each under
    ``MAX_PIECE_WORDS`` words and ``MAX_PIECE_CHARS`` characters; ``[(0, len)]`` if it is."""
    span = _strip_span(text, 0, len(text))
    return [] if span is None else _split_span(text, *span, 0)


def _split_span(text: str, lo: int, hi: int, level: int) -> list[tuple[int, int]]:
    if not _over_cap(text[lo:hi]):
        return [(lo, hi)]
    if level >= len(_CUT_LEVELS):
        return _windows(text, lo, hi)
    cuts = [m.end() for m in _CUT_LEVELS[level].finditer(text, lo, hi) if lo < m.end() < hi]
    units = [s for a, b in itertools.pairwise([lo, *cuts, hi]) if (s := _strip_span(text, a, b))]
    if len(units) < 2:
        return _split_span(text, lo, hi, level + 1)
    return _pack(text, [p for a, b in units for p in _split_span(text, a, b, level + 1)])


# --------------------------------------------------------------------------- story prep


@dataclass(frozen=True, slots=True)
class Sentence:
    text: str  # whitespace-normalised, verbatim otherwise
    article: int  # index into the story's article list
    position: int  # index among the article's sentences
    n_in_article: int
    complete: bool
    n_words: int
    #: a piece cut out of an over-long sentence (module doc, 1b), starting inside it
    cut_start: bool = False

    @property
    def is_candidate(self) -> bool:
        return self.complete and MIN_SENTENCE_WORDS <= self.n_words <= MAX_SENTENCE_WORDS

    def excerpt(self, max_words: int) -> str:
        """The text as a summary shows it: a complete sentence as is; an incomplete piece
        cut to ``max_words`` (>= 1) words, "…" marking each cut end (module doc)."""
        if self.complete:
            return self.text
        ends = [m.end() for m in BUDGET_WORD.finditer(self.text)]
        cut_end = len(ends) > max_words
        text = self.text[: ends[max(1, max_words) - 1]] if cut_end else self.text
        bare = text.rstrip(_CLOSERS)
        if cut_end or not (bare and bare[-1] in _TERMINALS):
            text += "…"
        return "…" + text if self.cut_start else text


@dataclass(slots=True)
class PreparedStory:
    """A story's sentences, their embeddings and the title embeddings."""

    articles: list[Article]
    sentences: list[Sentence]
    emb: F32  # [n_sentences, d]
    title_emb: F32  # [n_articles, d]; zero rows for articles without a title
    candidates: list[int]  # indices into sentences

    @property
    def n_articles(self) -> int:
        return len(self.articles)


def usable_articles(articles: Sequence[Article]) -> list[Article]:
    """Articles with some text, duplicates (same id) dropped; InvalidInput if none is left."""
    if isinstance(articles, Article):
        raise InvalidInput("summarise() takes a sequence of articles, not one article")
    seen: set[str] = set()
    out: list[Article] = []
    for a in articles:
        if not isinstance(a, Article):
            raise InvalidInput(f"expected Article, got {type(a).__name__}")
        if a.id in seen or not a.text or not a.text.strip():
            continue
        seen.add(a.id)
        out.append(a)
    if not out:
        raise InvalidInput("no article of the story has any text to summarise")
    return out


def story_sentences(articles: Sequence[Article]) -> list[Sentence]:
    """The first ``MAX_SENTENCES_PER_ARTICLE`` pieces of every article; an over-long
    "sentence" becomes incomplete pieces under the caps (module doc, 1b)."""
    out: list[Sentence] = []
    for ai, art in enumerate(articles):
        pieces: list[tuple[str, bool, bool]] = []  # (text, complete, cut_start)
        for s, e, complete in split_sentences(art.text):
            if len(pieces) >= MAX_SENTENCES_PER_ARTICLE:
                break
            text = normalise_ws(art.text[s:e])
            if _over_cap(text):
                pieces += [(text[a:b], False, a > 0) for a, b in split_long(text)]
            else:
                pieces.append((text, complete, False))
        pieces = pieces[:MAX_SENTENCES_PER_ARTICLE]
        for pi, (text, complete, cut_start) in enumerate(pieces):
            out.append(
                Sentence(text, ai, pi, len(pieces), complete, count_words(text), cut_start)
            )
    return out


def candidate_indices(sentences: Sequence[Sentence]) -> list[int]:
    """Complete sentences of a sane length; relaxed step by step when a story has none."""
    cands = [i for i, s in enumerate(sentences) if s.is_candidate]
    if not cands:
        cands = [i for i, s in enumerate(sentences) if s.complete]
    if not cands:
        cands = list(range(len(sentences)))
    return cands


def prepare_story(
    articles: Sequence[Article],
    embed: Any,
) -> PreparedStory:
    """Split and embed one story. ``embed``: texts -> L2-normalised float32 [n, d]."""
    arts = usable_articles(articles)
    sents = story_sentences(arts)
    texts = [s.text[:MAX_EMBED_CHARS] for s in sents]
    titled = [i for i, a in enumerate(arts) if a.title.strip()]
    vecs = embed(texts + [normalise_ws(arts[i].title)[:MAX_EMBED_CHARS] for i in titled])
    vecs = np.asarray(vecs, dtype=np.float32)
    emb = vecs[: len(sents)]
    title_emb = np.zeros((len(arts), emb.shape[1]), dtype=np.float32)
    for k, i in enumerate(titled):
        title_emb[i] = vecs[len(sents) + k]
    return PreparedStory(arts, sents, emb, title_emb, candidate_indices(sents))


# --------------------------------------------------------------------------- features

_STOP: Final = frozenset(
    [
        "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any",
        "are", "as", "at", "be", "because", "been", "before", "being", "below", "between",
        "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during",
        "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her",
        "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into",
        "is", "it", "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor",
        "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "out",
        "over", "own", "said", "same", "says", "she", "should", "so", "some", "such", "than",
        "that", "the", "their", "theirs", "them", "then", "there", "these", "they", "this",
        "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were",
        "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with",
        "would", "you", "your", "also", "new", "one", "two", "s", "t"
    ]
)
_WEEKDAY = re.compile(r"\b(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)\b")
_FIRST_PERSON = re.compile(r"\b(?:I|we|my|our|us|me|you|your)\b", re.IGNORECASE)
_DANGLING = re.compile(r"^(?:But|And|So|Yet|Or|He|She|It|They|This|That|These|Those|His|Her|"
                       r"Their|Its)\b")

FEATURE_NAMES: Final = (
    "cos_centroid",
    "cos_centroid_z",
    "cos_other_centroid",
    "max_other",
    "max_other_z",
    "mean_max_other",
    "cos_own_article",
    "cos_own_title",
    "max_other_title",
    "cos_title_centroid",
    "article_centrality",
    "lex_support",
    "bigram_support",
    "word_df",
    "title_lex",
    "position",
    "rel_position",
    "is_first",
    "log_words",
    "n_numbers",
    "n_caps",
    "has_quote",
    "starts_quote",
    "is_question",
    "has_weekday",
    "n_first_person",
    "dangling_start",
    "has_said",
    "lean_center",
    "lean_left",
    "lean_right",
    "n_articles",
    "single_article",
)


def _tokens(text: str) -> list[str]:
    return [w for w in (t.lower() for t in _WORD.findall(text)) if w not in _STOP]


def _unit(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else v


def _zscore(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    sd = float(x.std())
    return (x - x.mean()) / sd if sd > 1e-6 else np.zeros_like(x)


def _max_other_support(story: PreparedStory, sim: F32, art_of: npt.NDArray[np.int64]) -> F32:
    """Per sentence: the best cosine to any sentence of another article (0 if none)."""
    out = np.zeros(len(story.sentences), dtype=np.float32)
    for a in range(story.n_articles):
        own = art_of == a
        if own.all() or not own.any():
            continue
        out[own] = sim[np.ix_(own, ~own)].max(axis=1)
    return out


def story_features(story: PreparedStory) -> F32:
    """Sentence features ``[n_candidates, len(FEATURE_NAMES)]`` in candidate order."""
    sents, emb, cands = story.sentences, story.emb, story.candidates
    n_art = story.n_articles
    art_of = np.array([s.article for s in sents], dtype=np.int64)
    sim = emb @ emb.T
    centroid = _unit(emb.mean(axis=0))
    has_title = np.linalg.norm(story.title_emb, axis=1) > 0
    title_centroid = _unit(story.title_emb[has_title].mean(axis=0)) if has_title.any() else None
    art_centrality = [
        float(_unit(emb[art_of == a].mean(axis=0)) @ centroid) if (art_of == a).any() else 0.0
        for a in range(n_art)
    ]

    toks = [_tokens(s.text) for s in sents]
    art_vocab: list[set[str]] = [set() for _ in range(n_art)]
    art_bigrams: list[set[tuple[str, str]]] = [set() for _ in range(n_art)]
    for s, t in zip(sents, toks, strict=True):
        art_vocab[s.article].update(t)
        art_bigrams[s.article].update(itertools.pairwise(t))
    title_vocab = set().union(*(_tokens(a.title) for a in story.articles))
    # In how many articles each word / bigram occurs. A candidate's own article holds all
    # of its words, so "in another article" is a count above one.
    word_df = Counter(w for v in art_vocab for w in v)
    bigram_df = Counter(b for v in art_bigrams for b in v)
    # Per sentence, its best cosine within each article that has sentences (max is exact,
    # so these equal the per-candidate maxima they replace).
    present = [a for a in range(n_art) if (art_of == a).any()]
    best_in = (np.stack([sim[:, art_of == a].max(axis=1) for a in present], axis=1)
               if present else np.zeros((len(sents), 0), dtype=np.float32))
    other_centroids: dict[int, F32] = {}

    rows = []
    for i in cands:
        s, t = sents[i], toks[i]
        own = art_of == s.article
        other = ~own
        own_rest = own.copy()
        own_rest[i] = False
        if other.any():
            if s.article not in other_centroids:
                other_centroids[s.article] = _unit(emb[other].mean(axis=0))
            other_centroid = other_centroids[s.article]
            max_other = float(sim[i, other].max())
            cols = [c for c, a in enumerate(present) if a != s.article]
            mean_max_other = float(np.mean(best_in[i, cols].astype(np.float64)))
        else:
            # One article: "support" falls back to agreement with the rest of the article.
            other_centroid = centroid
            max_other = float(sim[i, own_rest].max()) if own_rest.any() else 1.0
            mean_max_other = max_other
        own_centroid = _unit(emb[own_rest].mean(axis=0)) if own_rest.any() else centroid
        n_others = n_art - 1
        other_titles = [a for a in range(n_art) if a != s.article and has_title[a]]
        bigr = list(itertools.pairwise(t))
        if n_others:
            lex = sum(word_df[w] > 1 for w in t) / max(1, len(t))
            blex = sum(bigram_df[b] > 1 for b in bigr) / max(1, len(bigr))
            df = float(np.mean([(word_df[w] - 1) / n_others for w in t])) if t else 0.0
        else:
            lex = blex = df = 0.0
        lean = (story.articles[s.article].lean or "").lower()
        rows.append([
            float(emb[i] @ centroid),
            0.0,  # z-scores filled below
            float(emb[i] @ other_centroid),
            max_other,
            0.0,
            mean_max_other,
            float(emb[i] @ own_centroid),
            float(emb[i] @ story.title_emb[s.article]) if has_title[s.article] else 0.0,
            max(float(emb[i] @ story.title_emb[a]) for a in other_titles) if other_titles
            else 0.0,
            float(emb[i] @ title_centroid) if title_centroid is not None else 0.0,
            art_centrality[s.article],
            lex,
            blex,
            df,
            sum(w in title_vocab for w in t) / max(1, len(t)),
            float(min(s.position, 10)),
            s.position / max(1, s.n_in_article - 1),
            float(s.position == 0),
            math.log1p(s.n_words),
            float(min(len(_NUMBER.findall(s.text)), 10)),
            float(min(len(_CAP.findall(s.text)), 15)),
            float(any(q in s.text for q in "“”\"")),
            float(s.text[:1] in "“\"‘'"),
            float(s.text.rstrip(_CLOSERS).endswith("?")),
            float(bool(_WEEKDAY.search(s.text))),
            float(min(len(_FIRST_PERSON.findall(s.text)), 5)),
            float(bool(_DANGLING.match(s.text))),
            float(" said" in s.text or " says" in s.text),
            float(lean == "center"),
            float(lean == "left"),
            float(lean == "right"),
            float(min(n_art, 10)),
            float(n_art == 1),
        ])
    feats = np.asarray(rows, dtype=np.float32).reshape(len(cands), len(FEATURE_NAMES))
    if len(cands):
        feats[:, 1] = _zscore(feats[:, 0])
        feats[:, 4] = _zscore(feats[:, 3])
    return feats


# --------------------------------------------------------------------------- concepts
#
# ROUGE rewards the summary's n-grams that also occur in the reference (clipped counts).
# So besides ranking sentences, the scorer predicts for every unigram / bigram g of the
# story and every k <= 4 the probability that the reference holds g at least k times.
# Selection then maximises the expected number of matched n-grams per word: coverage, and
# with it redundancy, handled the way ROUGE counts it.

KMAX: Final = 4
_ALNUM = re.compile(r"[a-z0-9]+")

CONCEPT_FEATURE_NAMES: Final = (
    "df_frac",
    "df",
    "tf",
    "title_frac",
    "title_n",
    "min_position",
    "is_bigram",
    "has_digit",
    "cap_frac",
    "max_centrality",
    "n_articles",
    "n_stop",
    "all_stop",
    "lead_frac",
    "max_support",
    "quote_frac",
    "center_frac",
    "min_rel_position",
    "max_len",
    "k",
    "k_gt1",
    "k_gt1_all_stop",
    "prior_mean",
    "prior_min",
    "prior_log_count",
    "prior_gram",
    "prior_gram_log_count",
)


@functools.lru_cache(maxsize=1 << 16)
def _stem(w: str) -> str:
    """A light, deterministic suffix stripper (the concept vocabulary, not linguistics)."""
    if len(w) <= 3 or w.isdigit():
        return w
    for suf, rep in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("es", ""),
                     ("s", "")):
        if w.endswith(suf) and len(w) - len(suf) >= 3 and not (suf == "s" and w.endswith("ss")):
            return w[: len(w) - len(suf)] + rep
    return w


def concept_tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric runs, lightly stemmed (ROUGE-like tokens)."""
    return [_stem(t) for t in _ALNUM.findall(text.lower())]


Gram = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Prior:
    """Lexical prior from train: how often a gram seen in a story's sources reappears in its
    reference, shrunk toward ``p0`` with ``m`` pseudo-counts. Grams seen in fewer than
    ``min_stories`` train stories count as unseen (and are not stored)."""

    counts: dict[str, tuple[int, int]]  # "w" / "w1 w2" -> (hits, stories)
    p0: float
    m: float = 5.0
    min_stories: int = 2
    #: gram -> its prior feature row (a pure function of the gram; see ``gram_row``)
    _rows: dict[Gram, list[float]] = field(default_factory=dict, compare=False, repr=False)

    def gram_row(self, gram: Gram) -> list[float]:
        """The prior columns of a gram: mean / min word rate, mean word log-count, the
        gram's own rate and log-count (its word's for a unigram). Remembered: most of a
        story's grams were seen in earlier stories."""
        row = self._rows.get(gram)
        if row is None:
            uni = [self.get(w) for w in gram]
            gp = self.get(" ".join(gram)) if len(gram) == 2 else uni[0]
            row = [sum(p for p, _ in uni) / len(uni), min(p for p, _ in uni),
                   sum(c for _, c in uni) / len(uni), gp[0], gp[1]]
            if len(self._rows) >= MAX_PRIOR_ROWS:
                self._rows.clear()
            self._rows[gram] = row
        return row

    def get(self, key: str, own: tuple[set[str], set[str]] | None = None) -> tuple[float, float]:
        """(shrunk hit rate, log1p(stories)); ``own`` = (source keys, hit keys) of a train
        story whose own contribution is left out (training only)."""
        hits, n = self.counts.get(key, (0, 0))
        if own is not None and n:
            n -= key in own[0]
            hits -= key in own[1]
        if n < self.min_stories:
            hits, n = 0, 0
        return (hits + self.m * self.p0) / (n + self.m), math.log1p(n)

    def to_json(self) -> str:
        return json.dumps({"p0": self.p0, "m": self.m, "min_stories": self.min_stories,
                           "counts": self.counts}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Prior:
        d = json.loads(raw)
        return cls({k: (int(v[0]), int(v[1])) for k, v in d["counts"].items()},
                   float(d["p0"]), float(d["m"]), int(d.get("min_stories", 2)))


EMPTY_PRIOR: Final = Prior({}, 0.2)
N_PRIOR_FEATURES: Final = 5


@dataclass(slots=True)
class StoryConcepts:
    grams: list[Gram]
    #: one row per (gram, k), k = 1..min(KMAX, story count of the gram)
    rows: list[tuple[int, int]]
    #: prior-free features [len(rows), len(CONCEPT_FEATURE_NAMES) - N_PRIOR_FEATURES]
    base: F32
    #: per sentence of the story: gram index -> count in that sentence
    sent_counts: list[dict[int, int]]

    def keys(self) -> set[str]:
        return {" ".join(g) for g in self.grams}

    def features(
        self, prior: Prior, own: tuple[set[str], set[str]] | None = None
    ) -> F32:
        """Full features: the base columns plus the lexical-prior columns."""
        if own is None:
            per_gram = [prior.gram_row(gram) for gram in self.grams]
        else:  # training: the story's own contribution left out, nothing to remember
            per_gram = []
            for gram in self.grams:
                uni = [prior.get(w, own) for w in gram]
                gp = prior.get(" ".join(gram), own) if len(gram) == 2 else uni[0]
                per_gram.append([sum(p for p, _ in uni) / len(uni), min(p for p, _ in uni),
                                 sum(c for _, c in uni) / len(uni), gp[0], gp[1]])
        pg = np.asarray(per_gram, dtype=np.float32).reshape(len(self.grams), N_PRIOR_FEATURES)
        idx = np.asarray([g for g, _ in self.rows], dtype=np.int64)
        return np.concatenate([self.base, pg[idx]], axis=1).astype(np.float32)


# Stories are re-analysed as they grow and the same stored sentences recur in ad hoc sets,
# so a sentence's grams are computed once (a pure function of its text). ~7 KB a sentence
# (measured on AllSides): 4,096 of them, ~10 twenty-article stories, hold ~28 MB.
@functools.lru_cache(maxsize=1 << 12)
def sentence_grams(text: str) -> tuple[tuple[Gram, bool, bool], ...]:
    """(gram, capitalised, inside quotes) for every unigram and bigram of a sentence."""
    toks: list[str] = []
    caps: list[bool] = []
    quoted: list[bool] = []
    inside = False
    for wi, word in enumerate(text.split()):
        if word[:1] in "“\"":
            inside = True
        ts = concept_tokens(word)
        toks += ts
        caps += [word[:1].isupper() and wi > 0] * len(ts)
        quoted += [inside] * len(ts)
        if word.rstrip(".,;:!?")[-1:] in "”\"":
            inside = False
    out: list[tuple[Gram, bool, bool]] = [((t,), caps[p], quoted[p]) for p, t in enumerate(toks)]
    out += [((a, b), caps[p], quoted[p]) for p, (a, b) in enumerate(itertools.pairwise(toks))]
    return tuple(out)


@functools.lru_cache(maxsize=1 << 15)
def _gram_shape(gram: Gram) -> tuple[float, float, float]:
    """(stop words, has a digit, longest word length) of a gram: the same in every story."""
    return (float(sum(w in _STOP for w in gram)),
            float(any(ch.isdigit() for w in gram for ch in w)),
            float(max(len(w) for w in gram)))


def story_concepts(story: PreparedStory) -> StoryConcepts:
    """Every unigram / bigram of the story's sentences with its prior-free features."""
    sents = story.sentences
    n_art = story.n_articles
    art_of = np.array([s.article for s in sents], dtype=np.int64)
    centrality = story.emb @ _unit(story.emb.mean(axis=0))
    support = _max_other_support(story, story.emb @ story.emb.T, art_of)
    # per gram: how many member titles hold it
    in_titles: dict[Gram, int] = {}
    for a in story.articles:
        tt = concept_tokens(a.title)
        title_grams: set[Gram] = {(t,) for t in tt} | set(itertools.pairwise(tt))
        for tg in title_grams:
            in_titles[tg] = in_titles.get(tg, 0) + 1

    # Every gram occurrence in one flat list; per-gram statistics then come from numpy
    # reductions instead of eight Python updates per occurrence.
    index: dict[Gram, int] = {}
    occ_g: list[int] = []
    occ_j: list[int] = []
    occ_cap: list[bool] = []
    occ_quoted: list[bool] = []
    sent_counts: list[dict[int, int]] = []
    for j, s in enumerate(sents):
        found = sentence_grams(s.text)
        ids = [index.setdefault(gram, len(index)) for gram, _, _ in found]
        occ_g += ids
        occ_j += [j] * len(ids)
        occ_cap += [cap for _, cap, _ in found]
        occ_quoted += [quoted for _, _, quoted in found]
        sent_counts.append(dict(Counter(ids)))  # first-occurrence order, as summed later
    n_grams = len(index)
    g_of = np.asarray(occ_g, dtype=np.int64)
    j_of = np.asarray(occ_j, dtype=np.int64)
    pos = np.asarray([float(s.position) for s in sents], dtype=np.float64)
    rel = np.asarray([s.position / max(1, s.n_in_article - 1) for s in sents], dtype=np.float64)
    center = np.asarray([float((story.articles[s.article].lean or "").lower() == "center")
                         for s in sents], dtype=np.float64)

    def total(weights: npt.NDArray[np.float64] | None) -> npt.NDArray[np.float64]:
        return np.bincount(g_of, weights=weights, minlength=n_grams).astype(np.float64)

    def extreme(ufunc: Any, start: float, values: npt.NDArray[np.float64]
                ) -> npt.NDArray[np.float64]:
        out = np.full(n_grams, start, dtype=np.float64)
        ufunc.at(out, g_of, values[j_of])
        return out

    def distinct_articles(mask: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.float64]:
        g, a = (g_of, art_of[j_of]) if mask is None else (g_of[mask], art_of[j_of][mask])
        pairs = np.unique(g * max(1, n_art) + a)
        return np.bincount(pairs // max(1, n_art), minlength=n_grams).astype(np.float64)

    tf = total(None)
    df = distinct_articles(None)
    grams = list(index)
    in_title = np.asarray([in_titles.get(gram, 0) for gram in grams], dtype=np.float64)
    shape = np.asarray([_gram_shape(gram) for gram in grams], dtype=np.float64)
    shape = shape.reshape(n_grams, 3)
    n_stop, has_digit, longest = shape[:, 0], shape[:, 1], shape[:, 2]
    is_bigram = np.asarray([len(gram) == 2 for gram in grams], dtype=np.float64)
    all_stop = (n_stop == is_bigram + 1).astype(np.float64)
    # float64 columns, then float32 once: the same numbers the per-gram Python floats gave
    base = np.stack([
        df / n_art, df, np.minimum(tf, 8.0), in_title / n_art, in_title,
        np.minimum(extreme(np.minimum, 99.0, pos), 6.0), is_bigram, has_digit,
        total(np.asarray(occ_cap, dtype=np.float64)) / tf,
        extreme(np.maximum, -1.0, centrality.astype(np.float64)),
        np.full(n_grams, float(min(n_art, 10))), n_stop, all_stop,
        distinct_articles(pos[j_of] <= 1) / n_art,
        extreme(np.maximum, -1.0, support.astype(np.float64)),
        total(np.asarray(occ_quoted, dtype=np.float64)) / tf, total(center[j_of]) / tf,
        extreme(np.minimum, 1.0, rel), longest,
    ], axis=1) if n_grams else np.zeros((0, len(CONCEPT_FEATURE_NAMES) - N_PRIOR_FEATURES - 3))
    # one row per (gram, k), k = 1 .. min(KMAX, tf), grams in order
    reps = np.minimum(KMAX, tf.astype(np.int64))
    row_gram = np.repeat(np.arange(n_grams, dtype=np.int64), reps)
    row_k = np.arange(len(row_gram), dtype=np.int64) - np.repeat(np.cumsum(reps) - reps, reps) + 1
    k_gt1 = (row_k > 1).astype(np.float64)
    arr = np.concatenate([
        base[row_gram], row_k.astype(np.float64)[:, None], k_gt1[:, None],
        (k_gt1 * all_stop[row_gram])[:, None],
    ], axis=1).astype(np.float32)
    rows = list(zip(row_gram.tolist(), row_k.tolist(), strict=True))
    return StoryConcepts(grams, rows, arr, sent_counts)


def concept_weight_table(concepts: StoryConcepts, weights: F32) -> F32:
    """Cumulative weights ``[n_grams, KMAX + 1]``: entry k = sum of P(ref count >= k') for
    k' <= k, so the gain of going from h to h + m copies is ``cum[g, h + m] - cum[g, h]``."""
    table = np.zeros((len(concepts.grams), KMAX + 1), dtype=np.float64)
    for (g, k), w in zip(concepts.rows, weights, strict=True):
        table[g, k] = w
    return np.cumsum(table, axis=1)


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True, slots=True)
class SelectionParams:
    """Tuned on AllSides train; stored in the scorer's ONNX metadata."""

    #: MMR trade-off: lam * relevance - (1 - lam) * max cosine to what is already selected
    mmr_lambda: float = 1.0
    #: relevance = (1 - mu) * expected n-gram gain per word + mu * sentence score
    mu: float = 0.0
    #: gain is divided by n_words ** alpha (1 = gain per word)
    alpha: float = 1.0
    #: weight of a bigram match relative to a unigram match
    bigram_weight: float = 1.0
    #: a candidate this similar (cosine) to a selected sentence is never added (near-copies)
    max_redundancy: float = 0.95
    #: share of a sentence that must fit inside the budget for it to be added last
    min_fit: float = 0.5
    #: cosine from which another article's sentence counts as support (citations)
    support_threshold: float = 0.6
    #: headline rule: "centroid" (title nearest the sentence centroid) or "title_centroid"
    headline: str = "centroid"
    #: beam width of the coverage search (0 = the greedy MMR above only); see ``_beam_select``
    beam: int = 0

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in self.__slots__}, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> SelectionParams:
        data = json.loads(raw)
        return cls(**{k: data[k] for k in cls.__slots__ if k in data})


DEFAULT_PARAMS: Final = SelectionParams()


def _minmax(scores: F32) -> F32:
    """Scores -> [0, 1] within the story, so weights mean the same in every story."""
    if scores.size == 0:
        return scores
    lo, hi = float(scores.min()), float(scores.max())
    if hi - lo < 1e-9:
        return np.ones_like(scores)
    return (scores - lo) / (hi - lo)


def select_sentences(
    story: PreparedStory,
    scores: F32,
    budget_words: int,
    params: SelectionParams,
    concepts: StoryConcepts | None = None,
    concept_weights: F32 | None = None,
) -> list[int]:
    """Greedy MMR under the budget rule (module doc); indices into ``story.sentences``.

    Relevance mixes the candidate's expected new n-gram matches per word (from the concept
    weights; 0 when absent) with its sentence score.
    """
    cands = story.candidates
    rel = _minmax(np.asarray(scores, dtype=np.float32))
    cum = (concept_weight_table(concepts, concept_weights)
           if concepts is not None and concept_weights is not None else None)
    n_words = [story.sentences[i].n_words for i in cands]
    cov = None
    gains: _Gains
    if cum is None or concepts is None:
        gains = _NoGains(len(cands))
    elif len(cands) * len(concepts.grams) <= MAX_BEAM_CELLS:
        cov = _Coverage(story, concepts, cum, params.bigram_weight)
        gains = _TableGains(cov, n_words, params.alpha)
    else:  # a story too large for the dense [candidates, grams] table
        gains = _PerGramGains(cands, concepts, cum, n_words, params)
    picked = _greedy_select(story, rel, budget_words, params, gains, n_words)
    if params.beam > 0 and cov is not None and len(cands) > 1:
        return _beam_select(story, budget_words, params, cov, picked)
    return picked


class _Gains(Protocol):
    """Expected new n-gram matches per word of every candidate, given what is picked."""

    def gains(self) -> npt.NDArray[np.float64]: ...
    def add(self, k: int) -> None: ...


class _NoGains:
    def __init__(self, n: int) -> None:
        self._zeros = np.zeros(n, dtype=np.float64)

    def gains(self) -> npt.NDArray[np.float64]:
        return self._zeros

    def add(self, k: int) -> None:
        pass


class _TableGains:
    """Every candidate's gain from one sparse pass over the coverage table."""

    def __init__(self, cov: _Coverage, n_words: list[int], alpha: float) -> None:
        self._cov = cov
        self._h = np.zeros(len(cov.rows), dtype=np.int64)
        self._denom = np.asarray(n_words, dtype=np.float64) ** alpha

    def gains(self) -> npt.NDArray[np.float64]:
        return self._cov.gains(self._h) / self._denom

    def add(self, k: int) -> None:
        self._h += self._cov.counts[k]


class _PerGramGains:
    """The same gains gram by gram, for stories whose dense table would be too large."""

    def __init__(self, cands: list[int], concepts: StoryConcepts,
                 cum: npt.NDArray[np.floating[Any]], n_words: list[int],
                 params: SelectionParams) -> None:
        self._cands, self._concepts, self._cum = cands, concepts, cum
        self._n_words, self._params = n_words, params
        self._have: dict[int, int] = {}

    def _gain(self, k: int) -> float:
        total = 0.0
        for g, m in self._concepts.sent_counts[self._cands[k]].items():
            h = self._have.get(g, 0)
            if h >= KMAX:
                continue
            w = self._params.bigram_weight if len(self._concepts.grams[g]) == 2 else 1.0
            total += w * float(self._cum[g, min(KMAX, h + m)] - self._cum[g, h])
        return total / float(self._n_words[k] ** self._params.alpha)

    def gains(self) -> npt.NDArray[np.float64]:
        return np.asarray([self._gain(k) for k in range(len(self._cands))], dtype=np.float64)

    def add(self, k: int) -> None:
        for g, m in self._concepts.sent_counts[self._cands[k]].items():
            self._have[g] = self._have.get(g, 0) + m


def _greedy_select(story: PreparedStory, rel: F32, budget_words: int,
                   params: SelectionParams, gains: _Gains, n_words: list[int]) -> list[int]:
    cands = story.candidates
    emb = story.emb
    texts = [story.sentences[i].text for i in cands]
    first = gains.gains()
    norm = float(first.max(initial=0.0)) or 1.0
    # max cosine to a picked sentence, kept up to date as sentences are picked
    red = np.zeros(len(cands), dtype=np.float64)
    chosen: list[int] = []
    words = 0
    remaining = set(range(len(cands)))
    seen_texts: set[str] = set()
    while remaining and words < budget_words:
        g_all = gains.gains() if chosen else first
        best, best_val = -1, -math.inf
        for k in sorted(remaining):
            if red[k] >= params.max_redundancy or texts[k] in seen_texts:
                continue
            n = n_words[k]
            room = budget_words - words
            if n > room and room < params.min_fit * n and chosen:
                continue
            relevance = (1 - params.mu) * (float(g_all[k]) / norm) + params.mu * float(rel[k])
            val = params.mmr_lambda * relevance - (1 - params.mmr_lambda) * float(red[k])
            if val > best_val + 1e-12:
                best, best_val = k, val
        if best < 0:
            break
        remaining.discard(best)
        chosen.append(best)
        seen_texts.add(texts[best])
        words += n_words[best]
        gains.add(best)
        for k in remaining:
            red[k] = max(red[k], float(emb[cands[k]] @ emb[cands[best]]))
    return [cands[k] for k in chosen]


class _Coverage:
    """Expected n-gram matches of sentence sets, over a story's candidates (by position k)."""

    def __init__(self, story: PreparedStory, concepts: StoryConcepts,
                 cum: npt.NDArray[np.floating[Any]], bigram_weight: float) -> None:
        cands = story.candidates
        self.story, self.cum = story, cum
        self.rows = np.arange(len(concepts.grams))
        self.w = np.where([len(g) == 2 for g in concepts.grams], bigram_weight, 1.0)
        self.counts = np.zeros((len(cands), len(concepts.grams)), dtype=np.int16)
        for k, i in enumerate(cands):
            for g, m in concepts.sent_counts[i].items():
                self.counts[k, g] = m
        # The table is sparse (a sentence holds a few dozen of the story's grams): the
        # per-step gains only visit the nonzero cells.
        self.nz_k, self.nz_g = np.nonzero(self.counts)
        self.nz_c = self.counts[self.nz_k, self.nz_g].astype(np.int64)
        self.nz_w = self.w[self.nz_g]
        self.n_words = [story.sentences[i].n_words for i in cands]
        self.texts = [story.sentences[i].text for i in cands]
        # equal texts share an id, so "same text as a member" is one vectorised test
        first_of: dict[str, int] = {}
        self.text_ids = np.asarray([first_of.setdefault(t, k) for k, t in enumerate(self.texts)],
                                   dtype=np.int64)
        self.order = [order_key(story, i) for i in cands]
        self.index = {g: n for n, g in enumerate(concepts.grams)}
        self._word_tokens: dict[int, list[list[str]]] = {}
        # w[g] * cum[g, c], flat, so value() is one take (the same products, summed alike)
        self._wcum = (self.w[:, None] * cum).ravel()
        self._row_base = self.rows * (KMAX + 1)

    def value(self, h: npt.NDArray[np.int64]) -> float:
        """Expected matches of a summary holding gram g ``h[g]`` times (ROUGE clipping)."""
        return float(self._wcum.take(self._row_base + np.minimum(h, KMAX)).sum())

    def gains(self, h: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """``value(h + counts[k]) - value(h)`` for every candidate k at once."""
        hg = h[self.nz_g]
        now = self.cum[self.nz_g, np.minimum(hg, KMAX)]
        then = self.cum[self.nz_g, np.minimum(hg + self.nz_c, KMAX)]
        return np.asarray(np.bincount(self.nz_k, weights=self.nz_w * (then - now),
                                      minlength=len(self.n_words)), dtype=np.float64)

    def extensions(self, h: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """``value(h + counts[k])`` for every candidate k at once."""
        return self.value(h) + self.gains(h)

    def word_tokens(self, k: int) -> list[list[str]]:
        """Concept tokens of each word of candidate k (the budget cuts at a word)."""
        toks = self._word_tokens.get(k)
        if toks is None:
            toks = self._word_tokens[k] = [concept_tokens(w) for w in self.texts[k].split()]
        return toks

    def as_read(self, sel: Sequence[int], budget_words: int) -> float:
        """Expected matches of the set's text in summary order, cut at the budget."""
        h = np.zeros(len(self.rows), dtype=np.int64)
        words = 0
        for k in sorted(sel, key=self.order.__getitem__):
            room = budget_words - words
            if self.n_words[k] <= room:
                h += self.counts[k]
                words += self.n_words[k]
                continue
            toks = [t for word in self.word_tokens(k)[:room] for t in word]
            for gram in itertools.chain(((t,) for t in toks), itertools.pairwise(toks)):
                g = self.index.get(gram)
                if g is not None:
                    h[g] += 1
            break
        return self.value(h)


def _beam_select(
    story: PreparedStory,
    budget_words: int,
    params: SelectionParams,
    cov: _Coverage,
    greedy: list[int],
) -> list[int]:
    """Beam search for the sentence set with the most expected n-gram matches *as read*.

    Greedy gain-per-word picks well early but commits to it; and what a reader (or a
    budget cut) sees is the set in summary order, where the sentence that crosses the
    budget is the chronologically last one, not the last one picked. So: partial sets
    under the budget are ranked by expected matches per word and the best ``beam`` of each
    size are extended; a set that reaches the budget is scored exactly on its ordered text
    cut at the budget. The greedy set competes too, so the result never scores below it
    under the model. Redundancy, duplicate-text and ``min_fit`` rules are the greedy ones.
    """
    cands = story.candidates
    n_words = cov.n_words
    n_words_arr = np.asarray(n_words, dtype=np.int64)
    text_ids = cov.text_ids
    # float64, so the threshold compares as the per-pair rule does (not rounded to float32)
    sims = (story.emb[cands] @ story.emb[cands].T).astype(np.float64)
    pos = {i: k for k, i in enumerate(cands)}
    best_sel = tuple(sorted(pos[i] for i in greedy))
    best_val = cov.as_read(best_sel, budget_words)
    seen: set[tuple[int, ...]] = {best_sel}
    frontier: list[tuple[tuple[int, ...], npt.NDArray[np.int64], int]] = [
        ((), np.zeros(len(cov.rows), dtype=np.int64), 0)]
    while frontier:
        # (value per word, set, parent counts, added candidate, words); a set's counts are
        # only summed up if it survives into the beam
        grown: list[tuple[float, tuple[int, ...], npt.NDArray[np.int64], int, int]] = []
        for sel, h, words in frontier:
            vals = cov.extensions(h)
            ok = np.ones(len(cands), dtype=bool)
            if sel:
                members = list(sel)
                ok[members] = False
                ok &= sims[:, members].max(axis=1) < params.max_redundancy
                ok &= ~np.isin(text_ids, text_ids[members])
            # the budget rule, vectorised: under it, or (crossing it) enough of it inside
            room = budget_words - words
            ok &= (words + n_words_arr < budget_words) | (not sel) | (
                room >= params.min_fit * n_words_arr)
            for k in np.flatnonzero(ok).tolist():
                key = tuple(sorted((*sel, k)))
                if key in seen:
                    continue
                total = words + n_words[k]
                if total < budget_words:
                    seen.add(key)
                    grown.append((float(vals[k]) / total, key, h, k, total))
                else:  # crossing the budget and passing min_fit (the mask above)
                    # min_fit depends on which member comes last: mark only sets that pass
                    seen.add(key)
                    v = cov.as_read(key, budget_words)
                    if v > best_val + 1e-9:
                        best_val, best_sel = v, key
        grown.sort(key=lambda t: (-t[0], t[1]))  # ties by index: deterministic
        frontier = [(key, h + cov.counts[k], words)
                    for _, key, h, k, words in grown[: params.beam]]
    return [cands[k] for k in best_sel]


def order_key(story: PreparedStory, i: int) -> tuple[float, int, int]:
    """Chronological by article time, then article input order, then position in article."""
    s = story.sentences[i]
    return (published_ts(story.articles[s.article]), s.article, s.position)


def supporting_articles(story: PreparedStory, i: int, threshold: float) -> list[int]:
    """Other articles holding a sentence with cosine >= threshold to sentence ``i``."""
    own = story.sentences[i].article
    best: dict[int, float] = {}
    sims = story.emb @ story.emb[i]
    for j, s in enumerate(story.sentences):
        if s.article != own:
            best[s.article] = max(best.get(s.article, -1.0), float(sims[j]))
    return sorted(a for a, v in best.items() if v >= threshold)


def choose_headline(story: PreparedStory, rule: str = "centroid") -> str:
    """One line: the member title nearest the story centroid (first sentence if no titles)."""
    has_title = [i for i, a in enumerate(story.articles) if a.title.strip()]
    if not has_title:
        first = story.sentences[story.candidates[0]] if story.candidates else story.sentences[0]
        return first.excerpt(MAX_PIECE_WORDS)
    if len(has_title) == 1:
        return normalise_ws(story.articles[has_title[0]].title)
    if rule == "title_centroid":
        target = _unit(story.title_emb[has_title].mean(axis=0))
    else:
        target = _unit(story.emb.mean(axis=0))
    sims = [float(story.title_emb[i] @ target) for i in has_title]
    best = has_title[int(np.argmax(sims))]  # argmax: first of ties, so deterministic
    return normalise_ws(story.articles[best].title)


# --------------------------------------------------------------------------- summariser


@dataclass(frozen=True, slots=True)
class Scorer:
    """The loaded ``scorer.onnx``: sentence scores and concept weights in one graph."""

    session: Any
    params: SelectionParams
    prior: Prior

    def sentence_scores(self, feats: F32) -> F32:
        if feats.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        (out,) = self._run(["score"], {"features": feats,
                                       "concepts": np.zeros((0, len(CONCEPT_FEATURE_NAMES)),
                                                            np.float32)})
        return out

    def concept_weights(self, feats: F32) -> F32:
        if feats.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        (out,) = self._run(["concept_weight"], {
            "features": np.zeros((0, len(FEATURE_NAMES)), np.float32), "concepts": feats})
        return out

    def _run(self, names: list[str], feeds: dict[str, F32]) -> list[F32]:
        try:
            outs = self.session.run(names, feeds)
        except Exception as exc:  # onnxruntime raises untyped errors
            raise ModelUnavailable(f"summariser scorer failed: {exc}") from exc
        return [np.asarray(o, dtype=np.float32).reshape(-1) for o in outs]


def load_scorer(path: Path, threads: int) -> Scorer:
    """The ONNX scorer session with its selection parameters and lexical prior."""
    from storyline.models.embedder import make_session

    sess = make_session(path, threads)
    meta = sess.get_modelmeta().custom_metadata_map
    names = tuple(json.loads(meta.get("features", "[]")))
    cnames = tuple(json.loads(meta.get("concept_features", "[]")))
    if names != FEATURE_NAMES or cnames != CONCEPT_FEATURE_NAMES:
        raise ModelUnavailable(
            "summariser scorer was trained on other features than this code computes; "
            "run `storyline models train-summariser --force`"
        )
    params = SelectionParams.from_json(meta["selection"]) if "selection" in meta else DEFAULT_PARAMS
    prior = Prior.from_json(meta["prior"]) if "prior" in meta else EMPTY_PRIOR
    return Scorer(sess, params, prior)


class ExtractiveSummariser:
    """Learned extractive multi-document summariser (implements ``Summariser``)."""

    def __init__(
        self,
        models_dir: Path,
        *,
        embedder: Embedder | None = None,
        threads: int = 2,
        params: SelectionParams | None = None,
    ) -> None:
        folder = Manifest(models_dir).verify(SUMMARISER)
        if embedder is None:
            from storyline.models.embedder import OnnxEmbedder

            embedder = OnnxEmbedder(models_dir, threads=threads)
        self._embedder = embedder
        self._scorer = load_scorer(folder / SUMMARISER.file, threads)
        self.params = params or self._scorer.params

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def prepare(self, articles: Sequence[Article]) -> PreparedStory:
        return prepare_story(articles, self._embedder.embed)

    def summarise(self, articles: Sequence[Article], budget_words: int = 80) -> Summary:
        if isinstance(budget_words, bool) or not isinstance(budget_words, int):
            raise InvalidInput("budget_words must be an integer")
        if budget_words < 1:
            raise InvalidInput("budget_words must be >= 1")
        story = self.prepare(articles)
        return self.summarise_prepared(story, budget_words)

    def select(self, story: PreparedStory, budget_words: int) -> list[int]:
        """Indices (into ``story.sentences``) of the summary, in summary order."""
        scores = self._scorer.sentence_scores(story_features(story))
        concepts = story_concepts(story)
        weights = self._scorer.concept_weights(concepts.features(self._scorer.prior))
        picked = select_sentences(story, scores, budget_words, self.params, concepts, weights)
        return sorted(picked, key=lambda i: order_key(story, i))

    def summarise_prepared(self, story: PreparedStory, budget_words: int) -> Summary:
        out: list[SummarySentence] = []
        words = 0
        for i in self.select(story, budget_words):
            s = story.sentences[i]
            text = s.text
            if not s.complete:  # an excerpt: cut at the budget, the cuts marked (module doc)
                if out and words >= budget_words:
                    continue
                text = s.excerpt(budget_words - words)
            words += count_words(text)
            ids = [story.articles[s.article].id]
            ids += [story.articles[a].id
                    for a in supporting_articles(story, i, self.params.support_threshold)]
            out.append(SummarySentence(text=text, article_ids=tuple(ids)))
        return Summary(
            headline=choose_headline(story, self.params.headline),
            sentences=tuple(out),
            mode="extractive",
        )
