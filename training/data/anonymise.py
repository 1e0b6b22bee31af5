"""Personal data to typed placeholders: e-mails, URLs, Polish phones, addresses, PESEL, IBAN/NRB.

Each kind is one named rule: a regular expression for what it looks like, and, where the format
has one, a checksum that separates the real thing from numbers of the same shape (PESEL's
weighted digit sum, IBAN's mod-97). Precision matters as much as recall: dates, prices, years,
ISBNs, order and article numbers must stay, so phone numbers need the grouping Polish numbers are
written in (or a +48 prefix, or a "tel." before them), and addresses need a street prefix (ul.,
al., pl., os.) or a postal code followed by a town.

Rules run in a fixed order (structured identifiers first), and what one rule replaced is not seen
by the next. The regular expressions are ours: no library covers Polish formats.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

UPPER = "A-ZĄĆĘŁŃÓŚŹŻ"
LOWER = "a-ząćęłńóśźż"
# A capitalised word of a street or town name ("Jana", "Pawła", "II", "Wojska", "Nowy").
NAME = rf"(?:[{UPPER}][{LOWER}{UPPER}.-]*|[IVX]+)"
STREET = rf"(?:ul\.|al\.|pl\.|os\.|ulica|aleja|plac|osiedle)\s+{NAME}(?:\s+{NAME}){{0,3}}"
NUMBER = r"\d+[a-zA-Z]?(?:\s*[\u2013-]\s*\d+[a-zA-Z]?)?(?:\s*/\s*\d+[a-zA-Z]?|\s+m\.\s*\d+)?"
POSTAL_TOWN = rf"\d{{2}}-\d{{3}}\s+{NAME}(?:[ -]{NAME})?"


@dataclass(frozen=True)
class Rule:
    kind: str  # the placeholder's name: [EMAIL], [PHONE], ...
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] = lambda text: True

    @property
    def placeholder(self) -> str:
        return f"[{self.kind}]"


def pesel_valid(text: str) -> bool:
    """PESEL: 11 digits, weights 1 3 7 9 1 3 7 9 1 3, check digit = (10 - sum mod 10) mod 10,
    and a real month (months carry the century: +20 for 2000s, +40, +60, +80)."""
    digits = [int(c) for c in text]
    check = (10 - sum(w * d for w, d in zip((1, 3, 7, 9) * 3, digits[:10], strict=False)) % 10) % 10
    month = (digits[2] * 10 + digits[3]) % 20
    day = digits[4] * 10 + digits[5]
    return check == digits[10] and 1 <= month <= 12 and 1 <= day <= 31


def iban_valid(text: str) -> bool:
    """IBAN (PL + 26 digits) or NRB (26 digits, the Polish form): ISO 13616 mod 97 == 1."""
    compact = re.sub(r"\s", "", text).upper()
    if not compact.startswith("PL"):
        compact = "PL" + compact
    rearranged = compact[4:] + compact[:4]
    numeric = "".join(str(int(c, 36)) for c in rearranged)
    return int(numeric) % 97 == 1


RULES = (
    Rule("EMAIL", re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    Rule("URL", re.compile(r"\b(?:https?://|www\.)[^\s<>\"]+[^\s<>\".,;:!?)”»]")),
    Rule(
        "IBAN",
        re.compile(r"(?<![\w])(?:PL\s?)?\d{2}(?:\s?\d{4}){6}(?!\d)", re.I),
        iban_valid,
    ),
    Rule("PESEL", re.compile(r"(?<!\d)\d{11}(?!\d)"), pesel_valid),
    Rule(
        "ADDRESS",
        re.compile(rf"{STREET}\s+{NUMBER}(?:,?\s+{POSTAL_TOWN})?|(?<![\d-]){POSTAL_TOWN}"),
    ),
    Rule(
        "PHONE",
        re.compile(
            r"(?<![\w+/.,-])(?:"
            r"(?:\+|00)48[ -]?(?:\d{3}[ -]?\d{3}[ -]?\d{3}|\d{2}[ -]?\d{3}[ -]?\d{2}[ -]?\d{2})"
            r"|\d{3}[ -]\d{3}[ -]\d{3}"  # mobile: 601 234 567, 601-234-567
            r"|\(\d{2}\)\s?\d{3}[ -]?\d{2}[ -]?\d{2}"  # landline: (22) 555 12 34
            r"|\d{2}[ -]\d{3}[ -]\d{2}[ -]\d{2}"  # landline: 22 555 12 34, 32-555-11-22
            # unbroken: only with a Polish mobile operator's prefix (45, 50, 51, 53, 57, 60, 66,
            # 69, 72, 73, 78, 79, 88), so order numbers and other 9-digit codes stay
            r"|(?:45|5[0137]|6[069]|7[2389]|88)\d{7}"
            r")(?![\w-]|[.,]\d)",
            re.I,
        ),
    ),
)


def anonymise(text: str, rules: tuple[Rule, ...] = RULES) -> tuple[str, Counter[str]]:
    """`text` with every match of `rules` replaced by its placeholder, and how many of each."""
    counts: Counter[str] = Counter()
    for rule in rules:

        def replace(match: re.Match[str], rule: Rule = rule) -> str:
            if not rule.valid(match.group()):
                return match.group()
            counts[rule.kind] += 1
            return rule.placeholder

        text = rule.pattern.sub(replace, text)
    return text, counts
