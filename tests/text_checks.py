"""Small, explainable language and similarity measures for testing the corpus."""

import re

WORD = re.compile(r"\w+")
POLISH_LETTERS = set("ąćęłńóśźżĄĆĘŁŃÓŚŹŻ")
POLISH_STOPWORDS = set(
    "i w na z się nie to że do jest o a jak ale po co od za tak przez dla czy już jego jej ich "
    "ten ta te tym też są być może bardzo przy pod tylko jeszcze gdy który która które kiedy "
    "oraz bo więc nas mnie mi go je ja ty on ona my wy oni mam ma było była był".split()
)
ENGLISH_STOPWORDS = set(
    "the of and to a in is that it for on with as was be by are this at from or an not have "
    "has but they you we he she his her their which were will can if so there what when all".split()
)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def polish_letter_share(text: str) -> float:
    letters = [char for char in text if char.isalpha()]
    return sum(char in POLISH_LETTERS for char in letters) / max(len(letters), 1)


def stopword_share(text: str, stopwords: set[str]) -> float:
    tokens = words(text)
    return sum(token in stopwords for token in tokens) / max(len(tokens), 1)


def shingles(text: str, size: int = 5) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def near_duplicates(texts: dict[str, str], threshold: float) -> list[tuple[str, str, float]]:
    """Pairs whose 5-word-shingle Jaccard similarity reaches `threshold`.

    An inverted index from shingle to documents counts shared shingles only for pairs that share
    any, so the check stays fast on a thousand documents.
    """
    sets = {key: shingles(text) for key, text in texts.items()}
    index: dict[tuple[str, ...], list[str]] = {}
    for key, shingle_set in sets.items():
        for shingle in shingle_set:
            index.setdefault(shingle, []).append(key)
    shared: dict[tuple[str, str], int] = {}
    for keys in index.values():
        for i, first in enumerate(keys):
            for second in keys[i + 1 :]:
                shared[first, second] = shared.get((first, second), 0) + 1
    pairs = []
    for (first, second), common in shared.items():
        jaccard = common / (len(sets[first]) + len(sets[second]) - common)
        if jaccard >= threshold:
            pairs.append((first, second, round(jaccard, 3)))
    return pairs
