"""Deliberately broad detectors for personal-data-like strings, used to keep them out of every set
but the anonymisation one. They over-match on purpose (any 9+ digit run, any postal-code shape):
the corpus is written to avoid these shapes, so a hit is a document to fix, not noise.
"""

import re

PATTERNS = {
    "EMAIL": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "URL": re.compile(
        r"(?:https?://|www\.)\S+|\b[\w-]+(?:\.[\w-]+)*\.(?:pl|com|org|net|eu|io|example|test)\b"
    ),
    "PHONE": re.compile(
        r"\+48|\b\d{3}[ -]\d{3}[ -]\d{3}\b|(?:\(\d{2}\)|\b\d{2})[ -]\d{3}[ -]\d{2}[ -]\d{2}\b"
    ),
    "LONG_DIGITS": re.compile(r"\d{9,}"),
    "IBAN": re.compile(r"\b(?:PL ?)?\d{2}(?: ?\d{4}){6}\b"),
    "POSTAL_CODE": re.compile(r"\b\d{2}-\d{3}\b"),
    "STREET_NUMBER": re.compile(r"\b(?:ul|al|pl|os)\. ?[A-ZĄĆĘŁŃÓŚŹŻ][\w ]{0,30}? \d+\w?\b"),
}

# Reserved names (RFC 2606 / 6761) that can never point at a real site.
RESERVED_URL = re.compile(
    r"^(?:https?://)?(?:www\.)?(?:[\w-]+\.)*(?:example|test|invalid|example\.(?:com|net|org))(?:[/?#:]|$)"
)


def find(text: str) -> list[tuple[str, str]]:
    return [(kind, match) for kind, pattern in PATTERNS.items() for match in pattern.findall(text)]


def pesel_checksum_ok(number: str) -> bool:
    weights = (1, 3, 7, 9, 1, 3, 7, 9, 1, 3)
    total = sum(int(digit) * weight for digit, weight in zip(number, weights, strict=False))
    return len(number) == 11 and number.isdigit() and (10 - total % 10) % 10 == int(number[10])
