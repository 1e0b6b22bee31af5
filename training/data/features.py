"""Stylometric features per document: the input of the pretraining-data quality classifier.

Bielik 7B (paper, section 3.1) scored web documents with XGBoost on 266 StyloMetrix features; this
module computes a set of the same kind, in six groups: lexical, character, sentence (with
paragraphs and lines), repetition, structure, and grammatical shares from the morphological
analyser Morfeusz 2.

One source of truth: FEATURES, a tuple of `Feature(name, definition, group)`. Its order is the
column order of `compute_features`, and its names (with FEATURE_VERSION) are saved with a trained
classifier, so a model never meets columns it was not trained on. Bump FEATURE_VERSION whenever a
definition or the way a feature is computed changes. `python -m training.data.features` prints
the table.

Definitions used throughout:
  word       a maximal run of letters and digits (hyphens, apostrophes and dots split words);
             type statistics use lowercased words
  sentence   text up to . ! ? or an ellipsis followed by whitespace and a character that is not
             a lowercase letter (so "np. ten" and "w 2020 r. oraz" do not end a sentence), or up
             to a line break; only sentences with at least one word count
  paragraph  text between blank lines; line: a non-empty line, stripped
  share      a count divided by its denominator; density: a count per word. Both are NaN when
             the denominator is 0 (XGBoost treats NaN as missing), never inf

Speed: each document is split into paragraphs, sentences and words by regular expressions once;
characters are counted for the whole batch at once as a code-point array against lookup tables;
word statistics come from (document, word form) pairs, so each distinct form's properties
(length, stop word, morphology) are computed once per batch.

Morphology (optional, slower): each distinct form is analysed once per batch by Morfeusz 2 (SGJP
dictionary, NKJP-style tagset). Morfeusz does not disambiguate, so a word's class is that of the
first interpretation it lists (of the first segment, for words it splits: biegał|em), and where
that tag lists alternatives ("nom.acc") the word counts for each. The first interpretation is
not the most likely one for some frequent words (nie: conj, to: pred, być: subst, szybko: a
vocative noun); the shares are consistent across documents, not a tagger's. With
`morphology=False` those columns are NaN, so the column set never changes.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import Any

import numpy as np

FEATURE_VERSION = "1"

BATCH_SIZE = 1024


@dataclass(frozen=True)
class Feature:
    name: str
    definition: str
    group: str


# Common Polish function words (pronouns, prepositions, conjunctions, particles, forms of "być").
POLISH_STOP_WORDS = frozenset(
    """a aby ach albo ale ani aż bardzo bez bo bowiem by być był była było były będzie będą
    chociaż ci co coś czy czyli dla do dlatego gdy gdyż gdzie go i ich im inne iż ja jak jaki
    jakie jako je jeden jego jej jest jestem jeszcze jednak jeśli już każdy kiedy kto która
    które którego której który których którym ku lub ma mi mnie może mu my na nad nam nas nawet
    nic nie niech niż no o od on ona one oni ono oraz po pod podczas ponieważ potem przed przez
    przy się sobie są ta tak także tam te tego tej ten też to tu tylko tym u w we więc wszystko
    wszystkie z za ze że żeby""".split()
)
# Common English function words; the ones that are also common Polish words (a, i, to, no, on,
# do, we) are left out, so the two shares separate the languages.
ENGLISH_STOP_WORDS = frozenset(
    """the of and in is that it for with as was are be by this at from or an have has had not
    but which they you he she his her their were been will would can could there what all if
    more about so its than them these those then""".split()
)

DIACRITICS = (
    ("a_ogonek", "ą"),
    ("c_acute", "ć"),
    ("e_ogonek", "ę"),
    ("l_stroke", "ł"),
    ("n_acute", "ń"),
    ("o_acute", "ó"),
    ("s_acute", "ś"),
    ("z_acute", "ź"),
    ("z_dot", "ż"),
)

# (name, characters, description): each kind's share of all characters. Escapes stand for
# characters that look like ASCII ones.
PUNCTUATION = (
    ("period", ".", "full stops"),
    ("comma", ",", "commas"),
    ("semicolon", ";", "semicolons"),
    ("colon", ":", "colons"),
    ("exclamation", "!", "exclamation marks"),
    ("question", "?", "question marks"),
    ("hyphen", "-", "hyphen-minus signs"),
    ("en_dash", "\u2013", "en dashes"),
    ("em_dash", "\u2014", "em dashes"),
    ("paren_open", "(", "opening parentheses"),
    ("paren_close", ")", "closing parentheses"),
    ("square_bracket", "[]", "square brackets"),
    ("curly_brace", "{}", "curly braces"),
    ("angle_bracket", "<>", "angle brackets"),
    ("straight_double_quote", '"', "straight double quotes"),
    ("low_double_quote", "\u201e", "low double quotes (Polish opening quote)"),
    ("right_double_quote", "\u201d", "right double quotes"),
    ("left_double_quote", "\u201c", "left double quotes"),
    ("guillemet", "\u00ab\u00bb", "guillemets"),
    ("apostrophe", "'", "straight apostrophes"),
    ("right_single_quote", "\u2019", "right single quotes (typographic apostrophes)"),
    ("ellipsis", "\u2026", "ellipsis characters"),
    ("slash", "/", "slashes"),
    ("backslash", "\\", "backslashes"),
    ("pipe", "|", "vertical bars"),
    ("asterisk", "*", "asterisks"),
    ("ampersand", "&", "ampersands"),
    ("percent", "%", "percent signs"),
    ("hash", "#", "hash signs"),
    ("at_sign", "@", "at signs"),
    ("underscore", "_", "underscores"),
    ("plus", "+", "plus signs"),
    ("equals", "=", "equals signs"),
    ("tilde", "~", "tildes"),
    ("currency", "$\u20ac\u00a3\u00a5", "currency signs"),
    ("bullet", "\u2022\u00b7\u25aa\u25cf\u25ba\u25a0", "bullet characters"),
    ("degree", "\u00b0", "degree signs"),
    ("section", "\u00a7", "section signs"),
    ("caret_backtick", "^`", "carets and backticks"),
)

# Mojibake: UTF-8 Polish text decoded as Latin-1, cp1252 or cp1250 turns each two-byte letter
# into a lead character (the rendering of byte C2-C5 or E2) and a continuation character (the
# rendering of a byte 80-BF): "ó" -> "Ã³" (Latin-1) or "Ăł" (cp1250), "ę" -> "Ä™" (cp1252).
MOJIBAKE_ENCODINGS = ("latin-1", "cp1252", "cp1250")
MOJIBAKE_LEADS = frozenset(
    bytes([b]).decode(encoding)
    for b in (0xC2, 0xC3, 0xC4, 0xC5, 0xE2)
    for encoding in MOJIBAKE_ENCODINGS
)
MOJIBAKE_CONTINUATIONS = frozenset(
    bytes([b]).decode(encoding, errors="ignore")
    for b in range(0x80, 0xC0)
    for encoding in MOJIBAKE_ENCODINGS
) - {""}

PLACEHOLDERS = ("EMAIL", "URL", "PHONE", "ADDRESS", "PESEL", "IBAN")

SHORT_LINE_CHARS = 20
SHORT_SENTENCE_WORDS = 3
LONG_SENTENCE_WORDS = 40
LONG_WORD_CHARS = 7  # LIX readability counts words of more than six letters
HARD_WORD_SYLLABLES = 4  # the Polish FOG (Pisarek) counts words of four or more syllables

# --- the feature table -------------------------------------------------------------------------

_LEXICAL = (
    ("word_count", "number of words"),
    ("mean_word_len", "mean word length in characters"),
    ("std_word_len", "standard deviation of word length in characters"),
    *(
        (f"word_len_share_{n}", f"share of words of exactly {n} character{'s' * (n > 1)}")
        for n in range(1, 11)
    ),
    ("word_len_share_over_10", "share of words longer than 10 characters"),
    ("long_word_share", f"share of words of {LONG_WORD_CHARS} or more characters"),
    ("type_token_ratio", "distinct lowercased words / word count"),
    ("hapax_ratio", "lowercased words occurring exactly once / word count"),
    ("dis_legomena_ratio", "lowercased words occurring exactly twice / word count"),
    ("guiraud_index", "distinct lowercased words / sqrt(word count): length-robust diversity"),
    ("yule_k", "Yule's K: 10^4 * (sum of squared word frequencies - N) / N^2"),
    ("polish_stopword_share", "share of words in a list of ~120 Polish function words"),
    ("english_stopword_share", "share of words in a list of ~60 English function words"),
    ("capitalised_word_share", "share of words starting with an uppercase letter"),
    ("all_caps_word_share", "share of words of 2+ characters that are entirely uppercase"),
    ("numeric_word_share", "share of words made only of digits"),
    ("alphanumeric_mixed_share", "share of words mixing letters and digits (codes, ids)"),
    ("non_polish_letter_word_share", "share of words with a letter not in Polish (q v x é ...)"),
    ("mean_syllables", "mean syllables per word (Polish vowel groups, approximate)"),
    ("hard_word_share", f"share of words of {HARD_WORD_SYLLABLES}+ syllables (FOG-PL)"),
)

_CHARACTER = (
    ("char_count", "number of characters (code points)"),
    ("letter_share", "share of characters that are letters"),
    ("uppercase_share", "share of letters that are uppercase"),
    ("digit_share", "share of characters that are digits"),
    ("whitespace_share", "share of characters that are whitespace"),
    ("newline_share", "share of characters that are line feeds"),
    ("nbsp_share", "share of characters that are no-break spaces (U+00A0, U+202F)"),
    ("punctuation_share", "share of characters in Unicode punctuation categories (P*)"),
    ("symbol_share", "share of characters in Unicode symbol categories (S*)"),
    ("non_letter_share", "share of characters that are neither letters nor whitespace"),
    ("non_ascii_share", "share of characters outside ASCII"),
    ("diacritic_share", "share of letters that are Polish diacritics (ąćęłńóśźż, any case)"),
    *(
        (f"diacritic_share_{name}", f"share of letters that are {letter} or {letter.upper()}")
        for name, letter in DIACRITICS
    ),
    ("foreign_latin_letter_share", "share of letters that are Latin, not ASCII nor Polish (é ß)"),
    ("other_script_letter_share", "share of letters outside the Latin script"),
    ("control_char_share", "share of control characters other than tab, CR, LF and C1"),
    ("invisible_char_share", "share of format characters (zero-width, soft hyphen, BOM)"),
    ("astral_char_share", "share of characters outside the BMP (mostly emoji)"),
    ("mojibake_lead_share", "share of characters that lead UTF-8 mojibake (Â Ã Ä Å Ă Ĺ â)"),
    (
        "mojibake_pair_share",
        "share of characters starting a mojibake pair: a lead followed by the Latin-1/cp1252/"
        "cp1250 rendering of a UTF-8 continuation byte (Ã³, Ä™)",
    ),
    ("replacement_char_share", "share of characters that are U+FFFD replacement characters"),
    ("c1_control_share", "share of C1 control characters U+0080-U+009F (Latin-1 mojibake)"),
    *(
        (f"punct_share_{name}", f"share of characters that are {description} ({chars})")
        for name, chars, description in PUNCTUATION
    ),
)

_SENTENCE = (
    ("sentence_count", "number of sentences"),
    ("mean_sentence_len", "mean sentence length in words"),
    ("std_sentence_len", "standard deviation of sentence length in words"),
    ("max_sentence_len", "length of the longest sentence in words"),
    ("short_sentence_share", f"share of sentences of at most {SHORT_SENTENCE_WORDS} words"),
    ("long_sentence_share", f"share of sentences of {LONG_SENTENCE_WORDS} or more words"),
    ("question_sentence_share", "share of sentences ending in ?"),
    ("exclamation_sentence_share", "share of sentences ending in !"),
    ("period_sentence_share", "share of sentences ending in a single full stop"),
    ("ellipsis_sentence_share", "share of sentences ending in ... or an ellipsis character"),
    ("unterminated_sentence_share", "share of sentences ending in none of . ! ? ..."),
    ("capitalised_sentence_share", "share of sentences whose first word starts uppercase or digit"),
    ("paragraph_count", "number of paragraphs with at least one word"),
    ("mean_paragraph_len", "mean paragraph length in words"),
    ("max_paragraph_len", "length of the longest paragraph in words"),
    ("line_count", "number of non-empty lines"),
    ("mean_line_len", "mean length of non-empty lines in characters, stripped"),
    ("short_line_share", f"share of lines shorter than {SHORT_LINE_CHARS} characters"),
    ("terminal_punct_line_share", "share of lines ending in . ! ? ... or a closing quote"),
    ("ellipsis_line_share", "share of lines ending in ... or an ellipsis character"),
    ("lix", "LIX readability: mean sentence length + 100 * long word share"),
    ("fog_pl", "Polish FOG: 0.4 * (mean sentence length + 100 * hard word share)"),
)

_REPETITION = (
    ("duplicate_line_share", "share of lines that repeat an earlier line of the document"),
    ("duplicate_line_char_share", "share of line characters in lines repeating an earlier one"),
    ("duplicate_paragraph_share", "share of paragraphs that repeat an earlier paragraph"),
    ("duplicate_word_3gram_share", "share of lowercased word 3-grams repeating an earlier one"),
    ("duplicate_char_5gram_share", "share of character 5-grams repeating an earlier one"),
    ("top_word_share", "occurrences of the most frequent lowercased word / word count"),
    ("top_word_2gram_share", "occurrences of the most frequent lowercased word 2-gram / 2-grams"),
    ("char_run_share", "share of non-whitespace characters equal to the three before (!!!!)"),
)

_STRUCTURE = (
    ("bullet_line_share", "share of lines starting with a bullet (- * + or a bullet character)"),
    ("numbered_line_share", "share of lines starting with 1. 1) a) or a Roman numeral and ."),
    ("heading_line_share", "share of lines starting with 1-6 # and a space (Markdown headings)"),
    ("table_line_share", "share of lines with two or more | (tables)"),
    ("all_caps_line_share", "share of lines of 4+ characters whose letters are all uppercase"),
    ("boilerplate_line_share", "share of lines with web boilerplate (cookies, regulamin, ...)"),
    ("code_line_share", "share of lines ending in { } or ; (source code)"),
    ("url_density", "URLs (http://, https://, www.) per word"),
    ("email_density", "e-mail addresses per word"),
    ("placeholder_density", "anonymisation placeholders ([EMAIL], [URL], ...) per word"),
    *(
        (f"placeholder_density_{kind.lower()}", f"[{kind}] placeholders per word")
        for kind in PLACEHOLDERS
    ),
    ("html_tag_density", "HTML tags (<p>, </div>, <br/>) per word"),
    ("html_entity_density", "HTML entities (&amp; &nbsp; &#8211;) per word"),
    ("hashtag_density", "hashtags (#word) per word"),
    ("mention_density", "@mentions (not e-mail addresses) per word"),
)

# (name, mark, denominator mark, definition): a word's marks come from its Morfeusz analysis
# (see _morph_marks); the share is marked words / words with the denominator mark. "word" is
# every word containing a letter.
_MORPH_SHARES = (
    ("pos_noun_share", "noun", "word", "share of words that are nouns (subst, depr)"),
    ("pos_verb_share", "verb", "word", "share of words that are verb forms, incl. participles"),
    ("pos_adjective_share", "adjective", "word", "share of adjectives (adj, adja, adjp, adjc)"),
    ("pos_adverb_share", "adverb", "word", "share of adverbs (adv)"),
    ("pos_pronoun_share", "pronoun", "word", "share of pronouns (ppron12, ppron3, siebie)"),
    ("pos_numeral_share", "numeral", "word", "share of numerals (num, numcomp)"),
    ("pos_preposition_share", "preposition", "word", "share of prepositions (prep)"),
    ("pos_conjunction_share", "conjunction", "word", "share of conjunctions (conj, comp)"),
    ("pos_particle_share", "particle", "word", "share of particles (part)"),
    ("pos_interjection_share", "interjection", "word", "share of interjections (interj)"),
    ("pos_predicative_share", "predicative", "word", "share of predicatives (pred: można)"),
    ("pos_abbreviation_share", "abbreviation", "word", "share of abbreviations (brev)"),
    ("pos_unknown_share", "unknown", "word", "share of words unknown to Morfeusz (ign)"),
    ("pos_other_share", "other", "word", "share of other classes (romandig, sym, ...)"),
    ("verb_finite_share", "finite", "word", "share of present/future finite verbs (fin)"),
    ("verb_past_share", "past", "word", "share of past-tense verbs (praet)"),
    ("verb_future_bedzie_share", "bedzie", "word", "share of future forms of być (bedzie)"),
    ("verb_infinitive_share", "infinitive", "word", "share of infinitives (inf)"),
    ("verb_imperative_share", "imperative", "word", "share of imperatives (impt)"),
    ("verb_impersonal_share", "impersonal", "word", "share of impersonal -no/-to forms (imps)"),
    ("verb_participle_share", "participle", "word", "share of adjectival participles"),
    ("verb_adv_participle_share", "adv_participle", "word", "share of pcon and pant forms"),
    ("gerund_share", "gerund", "word", "share of gerunds (ger)"),
    ("agglutinate_share", "agglutinate", "word", "share of words with a person suffix (aglt)"),
    ("conditional_share", "conditional", "word", "share of fused conditionals (zrobiłbym)"),
    ("first_person_share", "first_person", "word", "share of words marked 1st person (pri)"),
    ("second_person_share", "second_person", "word", "share of words marked 2nd person (sec)"),
    ("verb_perfective_share", "perfective", "verb", "share of verbs allowing perfective aspect"),
    ("verb_imperfective_share", "imperfective", "verb", "share of verbs allowing imperfective"),
    *(
        (f"noun_case_{case}_share", f"case_{case}", "noun", f"share of nouns allowing case {case}")
        for case in ("nom", "gen", "dat", "acc", "inst", "loc", "voc")
    ),
    ("noun_plural_share", "plural", "noun", "share of nouns allowing plural number"),
    ("adj_comparative_share", "comparative", "adjective", "share of adjectives in comparative"),
    ("adj_superlative_share", "superlative", "adjective", "share of adjectives in superlative"),
    ("proper_name_share", "proper", "word", "share of words with a proper-name reading (any)"),
    ("vulgar_share", "vulgar", "word", "share of words with a reading marked wulg. (any)"),
    ("colloquial_share", "colloquial", "word", "share of words whose readings all carry pot."),
    ("archaic_share", "archaic", "word", "share of words whose readings all carry daw./przest."),
    ("ambiguous_share", "ambiguous", "word", "share of words with 2+ interpretations"),
    ("multi_segment_share", "multi_segment", "word", "share of words split into segments"),
)
_MORPHOLOGY = (
    ("analysed_word_count", "number of words containing a letter (morphology's denominator)"),
    *((name, definition) for name, _, _, definition in _MORPH_SHARES),
    ("mean_interpretations", "mean number of Morfeusz interpretations of a word's first segment"),
    ("lemma_type_token_ratio", "distinct lemmas (first interpretation) / analysed words"),
)

_GROUPS = (
    ("lexical", _LEXICAL),
    ("character", _CHARACTER),
    ("sentence", _SENTENCE),
    ("repetition", _REPETITION),
    ("structure", _STRUCTURE),
    ("morphology", _MORPHOLOGY),
)
FEATURES = tuple(
    Feature(name, definition, group) for group, entries in _GROUPS for name, definition in entries
)
MORPHOLOGY_FEATURES = frozenset(name for name, _ in _MORPHOLOGY)


def feature_names() -> list[str]:
    return [feature.name for feature in FEATURES]


def feature_definitions() -> list[tuple[str, str]]:
    return [(feature.name, feature.definition) for feature in FEATURES]


def feature_table() -> str:
    """The features as a Markdown table, for documentation and next to a trained classifier."""
    rows = [f"| {f.name} | {f.group} | {f.definition} |" for f in FEATURES]
    return "\n".join([f"Features version {FEATURE_VERSION}, {len(FEATURES)} features", "",
                      "| name | group | definition |", "|---|---|---|", *rows])  # fmt: skip


# --- computation -------------------------------------------------------------------------------


def compute_features(
    texts: Sequence[str], morphology: bool = True, batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """Features of each text: float32 array (len(texts), len(FEATURES)), columns as FEATURES.

    Texts are processed `batch_size` at a time (memory, and the scope of the word-form cache).
    With `morphology=False` the morphology columns are NaN and morfeusz2 is not needed.
    """
    matrix = np.empty((len(texts), len(FEATURES)), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        batch = [str(text) for text in texts[start : start + batch_size]]
        columns = _batch_columns(batch, morphology)
        if columns.keys() != set(feature_names()):
            # A programming error: the table and the computation went out of step.
            raise RuntimeError(f"computed != FEATURES: {columns.keys() ^ set(feature_names())}")
        for j, feature in enumerate(FEATURES):
            matrix[start : start + len(batch), j] = columns[feature.name]
    return matrix


def _ratio(numerator: Any, denominator: Any) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast_shapes(numerator.shape, denominator.shape), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _per_doc_sum(doc: np.ndarray, values: Any, n: int) -> np.ndarray:
    """Per document: the sum of `values` (one per item; `doc` says whose item it is)."""
    values = np.asarray(values)
    if values.dtype == bool:  # counting: indexing is much faster than float weights
        return np.bincount(doc[values], minlength=n).astype(np.float64)
    return np.bincount(doc, weights=values.astype(np.float64), minlength=n)


def _per_doc_max(doc: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -np.inf)
    np.maximum.at(out, doc, values)
    out[np.isinf(out)] = np.nan
    return out


def _batch_columns(texts: list[str], morphology: bool) -> dict[str, np.ndarray]:
    parsed = _parse(texts)
    words = _word_counts(parsed, len(texts))
    columns = _character_columns(texts)
    lexical = _lexical_columns(words)
    columns |= lexical
    columns |= _sentence_columns(parsed, words, lexical)
    columns |= _repetition_columns(parsed, words)
    columns |= _structure_columns(parsed, words)
    if morphology:
        columns |= _morphology_columns(words)
    else:
        columns |= {name: np.full(len(texts), np.nan) for name in MORPHOLOGY_FEATURES}
    return columns


# --- splitting documents (the only per-document Python loop) -----------------------------------

WORD = re.compile(r"[^\W_]+")
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
SENTENCE_BREAK = re.compile(
    r"(?<=[.!?\u2026])[\"'\u201d\u2019\u00bb)\]]*\s+(?![a-ząćęłńóśźż])|\s*\n\s*"
)
SENTENCE_CLOSERS = " \t\r\n\"'\u201d\u2019\u00bb)]"
BULLET_LINE = re.compile(r"^[-*+\u2022\u00b7\u25aa\u25cf\u25ba\u25a0\u2013\u2014]\s", re.M)
NUMBERED_LINE = re.compile(r"^(?:\d{1,3}[.)]|[a-z]\)|[IVXL]{1,5}\.)\s", re.M)
TERMINAL_LINE = re.compile(r"[.!?\u2026\"\u201d\u00bb]$", re.M)
ELLIPSIS_LINE = re.compile(r"(?:\.\.\.|\u2026)$", re.M)
HEADING_LINE = re.compile(r"^#{1,6}\s", re.M)
TABLE_LINE = re.compile(r"^.*\|.*\|", re.M)
CODE_LINE = re.compile(r"[{};]$", re.M)
# Matched in lowercased text (much faster than re.I).
BOILERPLATE = re.compile(
    r"cookie|ciasteczk|javascript|polityk\w* prywatności|regulamin|wszelkie prawa"
    r"|all rights reserved|zaloguj|zarejestruj|newsletter|czytaj (?:więcej|dalej)|read more"
    r"|udostępnij|skomentuj|lorem ipsum"
)

# Structure counts: (name, substrings one of which every match contains, pattern); testing the
# substrings first skips the regular expression for most documents. Placeholders: by kind.
STRUCTURE_PATTERNS = (
    ("url", ("://", "www."), re.compile(r"\b(?:https?://|www\.)[^\s<>\"]+")),
    ("email", ("@",), re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("html_tag", ("<",), re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")),
    ("html_entity", ("&",), re.compile(r"&(?:[a-zA-Z]{2,8}|#\d{1,7}|#[xX][0-9a-fA-F]{1,6});")),
    ("hashtag", ("#",), re.compile(r"(?<![\w&#])#[^\W\d_]\w*")),
    ("mention", ("@",), re.compile(r"(?<![\w.+-])@\w+(?![\w.-]*\.\w)")),
)
PLACEHOLDER = re.compile(r"\[(" + "|".join(PLACEHOLDERS) + r")\]")

SENTENCE_END_CODES = {"?": 1, "!": 2, ".": 3, "\u2026": 4}  # 0: unterminated, 4: ellipsis


@dataclass
class _Parsed:
    words: list[str]  # every word of the batch, in document order
    word_doc: np.ndarray
    sentence_doc: np.ndarray
    sentence_len: np.ndarray
    sentence_end: np.ndarray  # SENTENCE_END_CODES
    sentence_capital: np.ndarray
    paragraph_doc: np.ndarray
    paragraph_len: np.ndarray
    duplicate_paragraphs: np.ndarray
    line_counts: dict[str, np.ndarray]  # _count_lines per document
    structure_counts: dict[str, np.ndarray]  # STRUCTURE_PATTERNS and PLACEHOLDERS per document
    char_5grams: np.ndarray
    distinct_char_5grams: np.ndarray


def _parse(texts: list[str]) -> _Parsed:
    words: list[str] = []
    word_doc: list[int] = []
    sentences: list[tuple[int, int, int, bool]] = []
    paragraphs: list[tuple[int, int]] = []
    duplicate_paragraphs = []
    line_counts: list[dict[str, int]] = []
    structure_counts: list[list[int]] = []
    grams, distinct_grams = [], []
    for d, text in enumerate(texts):
        seen_paragraphs: list[str] = []
        for paragraph in PARAGRAPH_BREAK.split(text):
            n_paragraph = 0
            for sentence in SENTENCE_BREAK.split(paragraph):
                found = WORD.findall(sentence)
                if not found:
                    continue
                words += found
                n_paragraph += len(found)
                tail = sentence.rstrip(SENTENCE_CLOSERS)
                end = 4 if tail.endswith("...") else SENTENCE_END_CODES.get(tail[-1:], 0)
                sentences.append((d, len(found), end, not found[0][0].islower()))
            if n_paragraph:
                paragraphs.append((d, n_paragraph))
                seen_paragraphs.append(paragraph.strip())
        word_doc += [d] * (len(words) - len(word_doc))
        duplicate_paragraphs.append(len(seen_paragraphs) - len(set(seen_paragraphs)))
        line_counts.append(_count_lines(text))
        structure_counts.append(_count_structures(text))
        n_grams = max(len(text) - 4, 0)
        grams.append(n_grams)
        distinct_grams.append(len({text[i : i + 5] for i in range(n_grams)}))

    sentence_array = np.array(sentences, dtype=np.int64).reshape(-1, 4)
    paragraph_array = np.array(paragraphs, dtype=np.int64).reshape(-1, 2)
    structure_names = [name for name, _, _ in STRUCTURE_PATTERNS] + list(PLACEHOLDERS)
    structure_array = np.array(structure_counts, dtype=np.float64).reshape(-1, len(structure_names))
    return _Parsed(
        words=words,
        word_doc=np.array(word_doc, dtype=np.int64),
        sentence_doc=sentence_array[:, 0],
        sentence_len=sentence_array[:, 1],
        sentence_end=sentence_array[:, 2],
        sentence_capital=sentence_array[:, 3].astype(bool),
        paragraph_doc=paragraph_array[:, 0],
        paragraph_len=paragraph_array[:, 1],
        duplicate_paragraphs=np.array(duplicate_paragraphs, dtype=np.float64),
        line_counts={
            key: np.array([counts[key] for counts in line_counts], dtype=np.float64)
            for key in _count_lines("")
        },
        structure_counts=dict(zip(structure_names, structure_array.T, strict=True)),
        char_5grams=np.array(grams, dtype=np.float64),
        distinct_char_5grams=np.array(distinct_grams, dtype=np.float64),
    )


def _count_lines(text: str) -> dict[str, int]:
    """Line counts of one document. Line patterns run over the stripped lines joined by \\n."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    joined = "\n".join(lines)
    lowered = joined.lower()
    repeats = Counter(lines)
    boilerplate = {lowered.count("\n", 0, match.start()) for match in BOILERPLATE.finditer(lowered)}
    return {
        "lines": len(lines),
        "line_chars": sum(map(len, lines)),
        "short": sum(len(line) < SHORT_LINE_CHARS for line in lines),
        "terminal": len(TERMINAL_LINE.findall(joined)),
        "ellipsis": len(ELLIPSIS_LINE.findall(joined)),
        "duplicate": len(lines) - len(repeats),
        "duplicate_chars": sum(len(line) * (n - 1) for line, n in repeats.items() if n > 1),
        "bullet": len(BULLET_LINE.findall(joined)),
        "numbered": len(NUMBERED_LINE.findall(joined)),
        "heading": len(HEADING_LINE.findall(joined)),
        "table": len(TABLE_LINE.findall(joined)),
        "all_caps": sum(len(line) >= 4 and line.isupper() for line in lines),
        "boilerplate": len(boilerplate),  # lines with a match
        "code": len(CODE_LINE.findall(joined)),
    }


def _count_structures(text: str) -> list[int]:
    counts = [
        len(pattern.findall(text)) if any(marker in text for marker in markers) else 0
        for _, markers, pattern in STRUCTURE_PATTERNS
    ]
    kinds = Counter(PLACEHOLDER.findall(text)) if "[" in text else Counter()
    return counts + [kinds[kind] for kind in PLACEHOLDERS]


# --- characters: one code-point array for the batch, lookup tables --------------------------

_LETTER, _UPPER, _DIGIT, _SPACE, _NEWLINE, _NBSP, _PUNCT, _SYMBOL = (1 << i for i in range(8))
_ASCII, _DIACRITIC, _FOREIGN_LATIN, _OTHER_SCRIPT, _CONTROL, _INVISIBLE = (
    1 << i for i in range(8, 14)
)
_ASTRAL, _MOJIBAKE_LEAD, _MOJIBAKE_CONT, _REPLACEMENT, _C1 = (1 << i for i in range(14, 19))
_UPPER_LETTER = _LETTER | _UPPER
_ASTRAL_INDEX = 0x10000  # every code point above the BMP shares this table entry


@cache
def _char_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per code point: a bit set of properties, and the PUNCTUATION/DIACRITICS column (or -1)."""
    flags = np.zeros(_ASTRAL_INDEX + 1, dtype=np.uint32)
    polish = set("abcdefghijklmnopqrstuvwxyz" + "".join(letter for _, letter in DIACRITICS))
    for code in range(_ASTRAL_INDEX):
        char = chr(code)
        category = unicodedata.category(char)
        bits = 0
        if char.isalpha():
            bits |= _LETTER
            if char.lower() not in polish:
                latin = unicodedata.name(char, "").startswith("LATIN")
                bits |= _FOREIGN_LATIN if latin else _OTHER_SCRIPT
        bits |= _UPPER * char.isupper() | _DIGIT * char.isdigit() | _SPACE * char.isspace()
        bits |= _PUNCT * (category[0] == "P") | _SYMBOL * (category[0] == "S")
        bits |= _INVISIBLE * (category == "Cf") | _ASCII * (code < 0x80)
        if category == "Cc" and char not in "\t\n\r":
            bits |= _C1 if 0x80 <= code <= 0x9F else _CONTROL
        flags[code] = bits
    flags[ord("\n")] |= _NEWLINE
    flags[[0xA0, 0x202F]] |= _NBSP
    flags[[ord(c) for _, letter in DIACRITICS for c in (letter, letter.upper())]] |= _DIACRITIC
    flags[[ord(c) for c in MOJIBAKE_LEADS]] |= _MOJIBAKE_LEAD
    flags[[ord(c) for c in MOJIBAKE_CONTINUATIONS]] |= _MOJIBAKE_CONT
    flags[0xFFFD] |= _REPLACEMENT
    flags[_ASTRAL_INDEX] = _ASTRAL

    columns = np.full(_ASTRAL_INDEX + 1, -1, dtype=np.int64)
    for column, (_, letter) in enumerate(DIACRITICS):
        columns[[ord(letter), ord(letter.upper())]] = column
    for column, (_, chars, _) in enumerate(PUNCTUATION, start=len(DIACRITICS)):
        columns[[ord(c) for c in chars]] = column
    return flags, columns


def _character_columns(texts: list[str]) -> dict[str, np.ndarray]:
    n = len(texts)
    flags_table, column_table = _char_tables()
    lengths = np.array([len(text) for text in texts], dtype=np.int64)
    # surrogatepass: a lone surrogate (from a bad decode upstream) is counted, not an error.
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    doc = np.repeat(np.arange(n), lengths)
    flags = flags_table[np.minimum(codes, _ASTRAL_INDEX)]

    def count(bits: int) -> np.ndarray:
        """Per document: characters having all of `bits`."""
        return _per_doc_sum(doc, (flags & bits) == bits, n)

    letters = count(_LETTER)
    space = count(_SPACE)
    same_doc = doc[1:] == doc[:-1]
    pairs = (flags[:-1] & _MOJIBAKE_LEAD != 0) & (flags[1:] & _MOJIBAKE_CONT != 0) & same_doc
    columns = {
        "char_count": lengths.astype(np.float64),
        "letter_share": _ratio(letters, lengths),
        "uppercase_share": _ratio(count(_UPPER_LETTER), letters),
        "digit_share": _ratio(count(_DIGIT), lengths),
        "whitespace_share": _ratio(space, lengths),
        "newline_share": _ratio(count(_NEWLINE), lengths),
        "nbsp_share": _ratio(count(_NBSP), lengths),
        "punctuation_share": _ratio(count(_PUNCT), lengths),
        "symbol_share": _ratio(count(_SYMBOL), lengths),
        "non_letter_share": _ratio(lengths - letters - space, lengths),
        "non_ascii_share": _ratio(lengths - count(_ASCII), lengths),
        "diacritic_share": _ratio(count(_DIACRITIC), letters),
        "foreign_latin_letter_share": _ratio(count(_FOREIGN_LATIN), letters),
        "other_script_letter_share": _ratio(count(_OTHER_SCRIPT), letters),
        "control_char_share": _ratio(count(_CONTROL), lengths),
        "invisible_char_share": _ratio(count(_INVISIBLE), lengths),
        "astral_char_share": _ratio(count(_ASTRAL), lengths),
        "mojibake_lead_share": _ratio(count(_MOJIBAKE_LEAD), lengths),
        "mojibake_pair_share": _ratio(_per_doc_sum(doc[:-1], pairs, n), lengths),
        "replacement_char_share": _ratio(count(_REPLACEMENT), lengths),
        "c1_control_share": _ratio(count(_C1), lengths),
    }

    # Diacritic letters and punctuation kinds: one bincount over (document, column) cells.
    n_columns = len(DIACRITICS) + len(PUNCTUATION)
    column = column_table[np.minimum(codes, _ASTRAL_INDEX)]
    hit = column >= 0
    cells = np.bincount(doc[hit] * n_columns + column[hit], minlength=n * n_columns)
    cells = cells.reshape(n, n_columns).astype(np.float64)
    for j, (name, _) in enumerate(DIACRITICS):
        columns[f"diacritic_share_{name}"] = _ratio(cells[:, j], letters)
    for j, (name, _, _) in enumerate(PUNCTUATION, start=len(DIACRITICS)):
        columns[f"punct_share_{name}"] = _ratio(cells[:, j], lengths)

    # Runs: a non-whitespace character equal to the three before it, within one document.
    run = (codes[3:] == codes[2:-1]) & (codes[2:-1] == codes[1:-2]) & (codes[1:-2] == codes[:-3])
    run &= (doc[3:] == doc[:-3]) & (flags[3:] & _SPACE == 0)
    columns["char_run_share"] = _ratio(_per_doc_sum(doc[3:], run, n), lengths - space)
    return columns


# --- words: (document, form) pairs, properties per distinct form -------------------------------

VOWELS = re.compile(r"[aąeęioóuy]")
I_BEFORE_VOWEL = re.compile(r"i(?=[aąeęoóuy])")  # "i" only softens: nie, się, biegać
LETTER = re.compile(r"[^\W\d_]")
DIGIT = re.compile(r"\d")
NON_POLISH_LETTER = re.compile(r"[^\W\d_a-pr-uwyzA-PR-UWYZąćęłńóśźżĄĆĘŁŃÓŚŹŻ]")


@dataclass
class _Words:
    n_docs: int
    forms: list[str]  # distinct word forms of the batch, original case
    word_doc: np.ndarray
    word_form: np.ndarray  # per word: index into forms
    word_lower: np.ndarray  # per word: index of its lowercased form
    pair_doc: np.ndarray  # distinct (document, form) pairs and their counts
    pair_form: np.ndarray
    pair_count: np.ndarray
    lower_doc: np.ndarray  # distinct (document, lowercased form) pairs and their counts
    lower_count: np.ndarray
    word_count: np.ndarray  # per document

    def sum(self, per_form: np.ndarray) -> np.ndarray:
        """Per document: the sum over its words of a per-form value."""
        return _per_doc_sum(self.pair_doc, self.pair_count * per_form[self.pair_form], self.n_docs)


def _pairs(doc: np.ndarray, ids: np.ndarray, n_ids: int) -> tuple[np.ndarray, ...]:
    keys, counts = np.unique(doc * max(n_ids, 1) + ids, return_counts=True)
    return keys // max(n_ids, 1), keys % max(n_ids, 1), counts


def _word_counts(parsed: _Parsed, n: int) -> _Words:
    forms = list(dict.fromkeys(parsed.words))
    index = {form: i for i, form in enumerate(forms)}
    word_form = np.fromiter(map(index.__getitem__, parsed.words), np.int64, len(parsed.words))
    lower_index: dict[str, int] = {}
    form_lower = np.array(
        [lower_index.setdefault(form.lower(), len(lower_index)) for form in forms], dtype=np.int64
    )
    word_lower = form_lower[word_form] if forms else word_form
    pair_doc, pair_form, pair_count = _pairs(parsed.word_doc, word_form, len(forms))
    lower_doc, _, lower_count = _pairs(parsed.word_doc, word_lower, len(lower_index))
    return _Words(
        n_docs=n,
        forms=forms,
        word_doc=parsed.word_doc,
        word_form=word_form,
        word_lower=word_lower,
        pair_doc=pair_doc,
        pair_form=pair_form,
        pair_count=pair_count,
        lower_doc=lower_doc,
        lower_count=lower_count,
        word_count=np.bincount(parsed.word_doc, minlength=n).astype(np.float64),
    )


def _syllables(lower: str) -> int:
    return len(VOWELS.findall(lower)) - len(I_BEFORE_VOWEL.findall(lower))


def _lexical_columns(words: _Words) -> dict[str, np.ndarray]:
    forms, n_words = words.forms, words.word_count
    lowers = [form.lower() for form in forms]
    length = np.array([len(form) for form in forms], dtype=np.float64)
    syllables = np.array([_syllables(lower) for lower in lowers], dtype=np.float64)
    has_letter = np.array([LETTER.search(form) is not None for form in forms], dtype=bool)
    has_digit = np.array([DIGIT.search(form) is not None for form in forms], dtype=bool)

    def share(per_form: Any) -> np.ndarray:
        return _ratio(words.sum(np.asarray(per_form, dtype=np.float64)), n_words)

    mean_len = _ratio(words.sum(length), n_words)
    mean_square = _ratio(words.sum(length**2), n_words)
    once = words.lower_count == 1
    types = np.bincount(words.lower_doc, minlength=words.n_docs)
    squares = _per_doc_sum(words.lower_doc, words.lower_count.astype(np.float64) ** 2, words.n_docs)
    columns = {
        "word_count": n_words,
        "mean_word_len": mean_len,
        "std_word_len": np.sqrt(np.maximum(mean_square - mean_len**2, 0)),
        **{f"word_len_share_{n}": share(length == n) for n in range(1, 11)},
        "word_len_share_over_10": share(length > 10),
        "long_word_share": share(length >= LONG_WORD_CHARS),
        "type_token_ratio": _ratio(types, n_words),
        "hapax_ratio": _ratio(_per_doc_sum(words.lower_doc, once, words.n_docs), n_words),
        "dis_legomena_ratio": _ratio(
            _per_doc_sum(words.lower_doc, words.lower_count == 2, words.n_docs), n_words
        ),
        "guiraud_index": _ratio(types, np.sqrt(n_words)),
        "yule_k": 1e4 * _ratio(squares - n_words, n_words**2),
        "polish_stopword_share": share([lower in POLISH_STOP_WORDS for lower in lowers]),
        "english_stopword_share": share([lower in ENGLISH_STOP_WORDS for lower in lowers]),
        "capitalised_word_share": share([form[0].isupper() for form in forms]),
        "all_caps_word_share": share([len(form) > 1 and form.isupper() for form in forms]),
        "numeric_word_share": share(~has_letter & has_digit),
        "alphanumeric_mixed_share": share(has_letter & has_digit),
        "non_polish_letter_word_share": share(
            [NON_POLISH_LETTER.search(form) is not None for form in forms]
        ),
        "mean_syllables": share(syllables),
        "hard_word_share": share(syllables >= HARD_WORD_SYLLABLES),
    }
    return columns


def _sentence_columns(
    parsed: _Parsed, words: _Words, lexical: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    n = words.n_docs
    doc, length, end = parsed.sentence_doc, parsed.sentence_len, parsed.sentence_end
    count = np.bincount(doc, minlength=n).astype(np.float64)
    mean = _ratio(_per_doc_sum(doc, length, n), count)
    mean_square = _ratio(_per_doc_sum(doc, length.astype(np.float64) ** 2, n), count)
    lines = parsed.line_counts
    paragraphs = np.bincount(parsed.paragraph_doc, minlength=n).astype(np.float64)

    def share(mask: np.ndarray) -> np.ndarray:
        return _ratio(_per_doc_sum(doc, mask, n), count)

    def line_share(key: str) -> np.ndarray:
        return _ratio(lines[key], lines["lines"])

    return {
        "sentence_count": count,
        "mean_sentence_len": mean,
        "std_sentence_len": np.sqrt(np.maximum(mean_square - mean**2, 0)),
        "max_sentence_len": _per_doc_max(doc, length, n),
        "short_sentence_share": share(length <= SHORT_SENTENCE_WORDS),
        "long_sentence_share": share(length >= LONG_SENTENCE_WORDS),
        "question_sentence_share": share(end == SENTENCE_END_CODES["?"]),
        "exclamation_sentence_share": share(end == SENTENCE_END_CODES["!"]),
        "period_sentence_share": share(end == SENTENCE_END_CODES["."]),
        "ellipsis_sentence_share": share(end == SENTENCE_END_CODES["\u2026"]),
        "unterminated_sentence_share": share(end == 0),
        "capitalised_sentence_share": share(parsed.sentence_capital),
        "paragraph_count": paragraphs,
        "mean_paragraph_len": _ratio(
            _per_doc_sum(parsed.paragraph_doc, parsed.paragraph_len, n), paragraphs
        ),
        "max_paragraph_len": _per_doc_max(parsed.paragraph_doc, parsed.paragraph_len, n),
        "line_count": lines["lines"],
        "mean_line_len": line_share("line_chars"),
        "short_line_share": line_share("short"),
        "terminal_punct_line_share": line_share("terminal"),
        "ellipsis_line_share": line_share("ellipsis"),
        "lix": mean + 100 * lexical["long_word_share"],
        "fog_pl": 0.4 * (mean + 100 * lexical["hard_word_share"]),
    }


def _repetition_columns(parsed: _Parsed, words: _Words) -> dict[str, np.ndarray]:
    n = words.n_docs
    lines = parsed.line_counts
    paragraphs = np.bincount(parsed.paragraph_doc, minlength=n)
    top_word = _per_doc_max(words.lower_doc, words.lower_count, n)

    # Word n-grams stay within a document; each document's lowercased ids as Python tuples.
    starts = np.searchsorted(words.word_doc, np.arange(n + 1))
    ids = words.word_lower.tolist()
    trigrams, distinct_trigrams, bigrams, top_bigram = (np.zeros(n) for _ in range(4))
    for d in range(n):
        doc_ids = ids[starts[d] : starts[d + 1]]
        grams3 = list(zip(doc_ids, doc_ids[1:], doc_ids[2:], strict=False))
        trigrams[d], distinct_trigrams[d] = len(grams3), len(set(grams3))
        grams2 = Counter(pairwise(doc_ids))
        bigrams[d] = len(doc_ids) - 1 if doc_ids else 0
        top_bigram[d] = max(grams2.values(), default=0)
    return {
        "duplicate_line_share": _ratio(lines["duplicate"], lines["lines"]),
        "duplicate_line_char_share": _ratio(lines["duplicate_chars"], lines["line_chars"]),
        "duplicate_paragraph_share": _ratio(parsed.duplicate_paragraphs, paragraphs),
        "duplicate_word_3gram_share": _ratio(trigrams - distinct_trigrams, trigrams),
        "duplicate_char_5gram_share": _ratio(
            parsed.char_5grams - parsed.distinct_char_5grams, parsed.char_5grams
        ),
        "top_word_share": _ratio(top_word, words.word_count),
        "top_word_2gram_share": _ratio(top_bigram, bigrams),
    }


def _structure_columns(parsed: _Parsed, words: _Words) -> dict[str, np.ndarray]:
    lines, counts, n_words = parsed.line_counts, parsed.structure_counts, words.word_count
    line_keys = ("bullet", "numbered", "heading", "table", "all_caps", "boilerplate", "code")
    columns = {f"{key}_line_share": _ratio(lines[key], lines["lines"]) for key in line_keys}
    for name, _, _ in STRUCTURE_PATTERNS:
        columns[f"{name}_density"] = _ratio(counts[name], n_words)
    for kind in PLACEHOLDERS:
        columns[f"placeholder_density_{kind.lower()}"] = _ratio(counts[kind], n_words)
    columns["placeholder_density"] = _ratio(sum(counts[kind] for kind in PLACEHOLDERS), n_words)
    return columns


# --- morphology: Morfeusz 2 per distinct word form ---------------------------------------------

_CLASS_MARKS = {
    **dict.fromkeys(("subst", "depr"), ("noun",)),
    **dict.fromkeys(("adj", "adja", "adjp", "adjc"), ("adjective",)),
    "adv": ("adverb",),
    **dict.fromkeys(("ppron12", "ppron3", "siebie"), ("pronoun",)),
    **dict.fromkeys(("num", "numcomp"), ("numeral",)),
    "prep": ("preposition",),
    **dict.fromkeys(("conj", "comp"), ("conjunction",)),
    **dict.fromkeys(("part", "qub"), ("particle",)),
    "interj": ("interjection",),
    "pred": ("predicative",),
    "brev": ("abbreviation",),
    "ign": ("unknown",),
    # Verb forms: the coarse "verb" mark and the finer form.
    "fin": ("verb", "finite"),
    "bedzie": ("verb", "bedzie"),
    "praet": ("verb", "past"),
    "inf": ("verb", "infinitive"),
    "impt": ("verb", "imperative"),
    "imps": ("verb", "impersonal"),
    "pact": ("verb", "participle"),
    "ppas": ("verb", "participle"),
    "pcon": ("verb", "adv_participle"),
    "pant": ("verb", "adv_participle"),
    "ger": ("verb", "gerund"),
    "winien": ("verb",),
    "aglt": ("verb",),
}
_DEGREES = {"com": "comparative", "sup": "superlative"}
_ASPECTS = {"perf": "perfective", "imperf": "imperfective"}
_COMMON_NOUN_LABELS = frozenset(("nazwa_pospolita", "pospolita", "nazwa pospolita"))


@cache
def _morfeusz() -> Any:
    try:
        import morfeusz2
    except ImportError as error:  # the "data" extra installs it
        raise ImportError(
            "morphological features need morfeusz2 (pip install morfeusz2); "
            "or call compute_features(..., morphology=False)"
        ) from error
    return morfeusz2.Morfeusz(generate=False)


def _first_path(interps: list[tuple[int, int, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    """The first segmentation Morfeusz lists: from node 0, its first edge at each node."""
    first_edge: dict[int, tuple[int, tuple[Any, ...]]] = {}
    for start, end, interp in interps:
        first_edge.setdefault(start, (end, interp))
    path, node = [], 0
    while node in first_edge:
        node, interp = first_edge[node]
        path.append(interp)
    return path


def _morph_marks(form: str) -> tuple[set[str], str, int]:
    """One form's marks (see _MORPH_SHARES), first lemma and number of first-segment readings."""
    interps = _morfeusz().analyse(form)
    path = _first_path(interps)
    if not path:  # not seen in practice; Morfeusz marks what it does not know as ign
        return {"word", "unknown"}, form.lower(), 0
    _, lemma, tag, _, _ = path[0]
    # A tag field may list several values ("nom.acc": the form is either one); without
    # disambiguation, a form gets a mark for each value its first reading allows.
    fields = [set(field.split(".")) for field in tag.split(":")]
    category = tag.split(":")[0]
    marks = {"word", *_CLASS_MARKS.get(category, ("other",))}
    if category in ("subst", "depr") and len(fields) > 2:
        marks |= {f"case_{case}" for case in fields[2]}
        marks |= {"plural"} if "pl" in fields[1] else set()
    if category == "adj" and len(fields) > 4:
        marks |= {_DEGREES[degree] for degree in fields[4] & _DEGREES.keys()}
    if "verb" in marks:
        marks |= {_ASPECTS[aspect] for aspect in set().union(*fields) & _ASPECTS.keys()}
    # Segments after the first: agglutinates (biegał|em), the conditional by (zrobił|by|m).
    classes = [segment[2].split(":")[0] for segment in path]
    if len(path) > 1:
        marks.add("multi_segment")
    if "aglt" in classes:
        marks.add("agglutinate")
    if "praet" in classes and any(segment[0].lower() == "by" for segment in path[1:]):
        marks.add("conditional")
    values = {value for segment in path for field in segment[2].split(":")
              for value in field.split(".")}  # fmt: skip
    marks |= {"first_person"} if "pri" in values else set()
    marks |= {"second_person"} if "sec" in values else set()
    first_readings = [interp for start, _, interp in interps if start == 0]
    if len(first_readings) > 1:
        marks.add("ambiguous")
    # Names and vulgarisms count when any reading has them (a capitalised "Kot" may be a
    # surname); style labels only when every reading has them, because the first reading of
    # a plain word is often a rare sense ("kot" as army slang, pot.).
    qualifiers = [",".join(reading[4]) for reading in first_readings]
    for reading in first_readings:
        names = {name for label in reading[3] for name in label.split("|")}
        if reading[2].split(":")[0] in ("subst", "depr") and names - _COMMON_NOUN_LABELS:
            marks.add("proper")
    if any("wulg." in text for text in qualifiers):
        marks.add("vulgar")
    if all("pot." in text for text in qualifiers):
        marks.add("colloquial")
    if all("daw." in text or "przest." in text for text in qualifiers):
        marks.add("archaic")
    return marks, lemma.split(":")[0].lower(), len(first_readings)


def _morphology_columns(words: _Words) -> dict[str, np.ndarray]:
    n = words.n_docs
    analysed = [i for i, form in enumerate(words.forms) if LETTER.search(form)]
    marks = {
        name: np.zeros(len(words.forms))
        for name in {"word", *(m for _, m, _, _ in _MORPH_SHARES), "noun", "verb", "adjective"}
    }
    readings = np.zeros(len(words.forms))
    lemma_of_form = np.full(len(words.forms), -1, dtype=np.int64)
    lemma_index: dict[str, int] = {}
    for i in analysed:  # the per-batch cache: each distinct form is analysed once
        form_marks, lemma, n_readings = _morph_marks(words.forms[i])
        for mark in form_marks:
            if mark in marks:
                marks[mark][i] = 1
        readings[i] = n_readings
        lemma_of_form[i] = lemma_index.setdefault(lemma, len(lemma_index))

    totals = {mark: words.sum(values) for mark, values in marks.items()}
    columns = {"analysed_word_count": totals["word"]}
    for name, mark, denominator, _ in _MORPH_SHARES:
        columns[name] = _ratio(totals[mark], totals[denominator])
    columns["mean_interpretations"] = _ratio(words.sum(readings), totals["word"])
    # Distinct lemmas per document, over the analysed words only.
    word_lemma = lemma_of_form[words.word_form] if len(words.forms) else words.word_form
    keep = word_lemma >= 0
    lemma_doc, _, _ = _pairs(words.word_doc[keep], word_lemma[keep], len(lemma_index))
    columns["lemma_type_token_ratio"] = _ratio(np.bincount(lemma_doc, minlength=n), totals["word"])
    return columns


if __name__ == "__main__":
    print(feature_table())
