"""Cleanup of raw web and document text, rule by rule: each named, counted and switchable.

A rule takes a document and returns it with how many changes it made, so a run can report what
each rule did ("html: 1,204 tags in 310 documents"). Rules run in the order of `RULES`: encoding
first (mojibake breaks every later pattern), whitespace last (the others leave gaps).
Encoding repair is ftfy's; the rest are short patterns of ours, since no library knows Polish
boilerplate.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    name: str
    definition: str
    apply: Callable[[str], tuple[str, int]]


def fix_encoding(text: str) -> tuple[str, int]:
    """Mojibake (UTF-8 read as cp1252 or Latin-1, e.g. "zaÅ¼" for "zaż") repaired by ftfy."""
    import ftfy

    # Polish quotes („…”) are typography, not damage: ftfy would straighten them by default.
    fixed = ftfy.fix_text(text, unescape_html=False, normalization=None, uncurl_quotes=False)
    return fixed, int(fixed != text)


def normalise_unicode(text: str) -> tuple[str, int]:
    """NFC, so "ż" is one code point whether it came composed or as z + combining dot."""
    normal = unicodedata.normalize("NFC", text)
    return normal, int(normal != text)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\ufeff]")


def remove_control(text: str) -> tuple[str, int]:
    """Control characters, zero-width spaces and byte-order marks (tabs and newlines stay)."""
    return _CONTROL.subn("", text)


_TAG = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?\s*>")
_ENTITY = re.compile(r"&(?:#\d{1,6}|#x[0-9a-fA-F]{1,6}|[a-zA-Z][a-zA-Z0-9]{1,31});")


def strip_html(text: str) -> tuple[str, int]:
    """HTML tags (<br>, <p class=...>) removed and entities (&amp; &nbsp; &#8211;) decoded."""
    text, tags = _TAG.subn(" ", text)
    entities = len(_ENTITY.findall(text))
    if entities:
        text = html.unescape(text).replace("\xa0", " ")
    return text, tags + entities


_BOILERPLATE = re.compile(
    r"^\s*(?:"
    r"(?:strona główna|zaloguj się|zarejestruj się|wyloguj|menu|szukaj|kontakt|regulamin"
    r"|polityka prywatności|polityka cookies|mapa strony|newsletter|udostępnij|drukuj"
    r"|czytaj (?:więcej|dalej)|pokaż więcej|przejdź do treści|wróć(?: do góry)?|skip to content"
    r"|home|login|sign in|share|print|read more)\s*[|»>•·-]?\s*"
    r"|.*(?:wszelkie prawa zastrzeżone|all rights reserved).*"
    r"|.*(?:używamy plików cookies|ta strona (?:używa|wykorzystuje) (?:plików )?cookies"
    r"|this (?:site|website) uses cookies|akceptuję(?: cookies)?).*"
    r"|©.*"
    r"|(?:[^|\n]{1,25}\|){2,}[^|\n]{0,25}"  # menus: "Start | O nas | Oferta | Kontakt"
    r")\s*$",
    re.IGNORECASE | re.MULTILINE,
)


def remove_boilerplate(text: str) -> tuple[str, int]:
    """Navigation, cookie banners, copyright and share lines: whole lines, never inside prose."""
    return _BOILERPLATE.subn("", text)


def remove_repeated(text: str) -> tuple[str, int]:
    """Second and later copies of a line or paragraph (page headers repeated through a scan)."""
    seen: set[str] = set()
    kept, removed = [], 0
    for line in text.split("\n"):
        key = line.strip()
        if len(key) >= 20 and key in seen:  # short lines ("Tak.", "1.") repeat legitimately
            removed += 1
            continue
        seen.add(key)
        kept.append(line)
    return "\n".join(kept), removed


_ODD_SPACE = r"\t\u00a0\u2000-\u200a\u202f\u205f\u3000"
_SPACES = re.compile(rf"[ {_ODD_SPACE}]{{2,}}|[{_ODD_SPACE}]")  # a single plain space is fine
_LINE_END = re.compile(r" +\n| +$|^ +", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_whitespace(text: str) -> tuple[str, int]:
    """Runs of spaces/tabs to one space, no spaces at line ends, at most one blank line."""
    changed = 0
    for pattern, replacement in ((_SPACES, " "), (_LINE_END, "\n"), (_BLANK_LINES, "\n\n")):
        text, n = pattern.subn(replacement, text)
        changed += n
    stripped = text.strip()
    return stripped, changed + int(stripped != text)


RULES = (
    Rule("encoding", "repair mojibake and broken text with ftfy", fix_encoding),
    Rule("unicode", "Unicode NFC normalisation", normalise_unicode),
    Rule("control", "remove control and zero-width characters", remove_control),
    Rule("html", "strip HTML tags, decode entities", strip_html),
    Rule("boilerplate", "drop navigation, cookie, copyright and share lines", remove_boilerplate),
    Rule("repeated", "drop repeated lines and paragraphs of 20+ characters", remove_repeated),
    Rule("whitespace", "collapse spaces, trim lines, at most one blank line", normalise_whitespace),
)
RULE_NAMES = tuple(rule.name for rule in RULES)


def select_rules(names: Sequence[str] | None = None, skip: Sequence[str] = ()) -> tuple[Rule, ...]:
    """The rules to run: all, or `names`, minus `skip`; an unknown name is a ValueError."""
    for name in [*(names or ()), *skip]:
        if name not in RULE_NAMES:
            raise ValueError(f"unknown cleanup rule {name!r}; rules: {', '.join(RULE_NAMES)}")
    wanted = set(names or RULE_NAMES) - set(skip)
    return tuple(rule for rule in RULES if rule.name in wanted)


def clean(text: str, rules: Sequence[Rule] = RULES) -> tuple[str, Counter[str]]:
    """`text` through `rules` in order, and how many changes each made."""
    counts: Counter[str] = Counter()
    for rule in rules:
        text, changed = rule.apply(text)
        if changed:
            counts[rule.name] += changed
    return text, counts
