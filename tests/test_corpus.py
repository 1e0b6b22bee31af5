"""The built-in corpus: manifest, sizes, splits, language, originality and personal data."""

from collections import Counter

import pytest

from calibration_data import DOMAINS, LANGUAGES, load, load_records
from calibration_data.manifest import (
    CORPUS_SPLITS,
    DATA_DIR,
    check_manifest,
    read_manifest,
    record_texts,
)
from tests import personal_data
from tests.text_checks import (
    ENGLISH_STOPWORDS,
    POLISH_STOPWORDS,
    near_duplicates,
    polish_letter_share,
    stopword_share,
)

KB = 1024
MANIFEST = read_manifest()
CORPUS = [entry for entry in MANIFEST["files"] if entry["kind"] == "corpus"]
SFT = load_records("sft")
QUALITY = load_records("quality")
ANONYMISATION = load_records("anonymisation")


def corpus_text(entry: dict) -> str:
    return (DATA_DIR / entry["path"]).read_text("utf-8")


def test_manifest_matches_files() -> None:
    assert check_manifest() == []


def test_corpus_size_floors() -> None:
    total = sum(entry["bytes"] for entry in CORPUS)
    assert total >= 400 * KB
    polish_chars = sum(entry["characters"] for entry in CORPUS if entry["language"] == "pl")
    assert polish_chars / sum(entry["characters"] for entry in CORPUS) >= 0.75
    eval_bytes = Counter()
    for entry in CORPUS:
        if entry["split"] == "eval":
            eval_bytes[entry["language"]] += entry["bytes"]
    assert eval_bytes["pl"] >= 60 * KB
    assert eval_bytes["en"] >= 20 * KB


def test_documents_are_roughly_one_to_eight_kilobytes() -> None:
    sizes = {entry["path"]: entry["bytes"] for entry in CORPUS}
    assert {path: size for path, size in sizes.items() if not 900 <= size <= 8 * KB} == {}


def test_every_domain_and_language_is_in_every_split() -> None:
    assert len(DOMAINS) >= 14
    present = {(entry["domain"], entry["language"], entry["split"]) for entry in CORPUS}
    missing = [
        triple
        for triple in ((d, lang, s) for d in DOMAINS for lang in LANGUAGES for s in CORPUS_SPLITS)
        if triple not in present
    ]
    assert missing == []


def test_loader_splits_are_disjoint_and_complete() -> None:
    ids = {
        split: {doc.id for doc in load("pl-en", split=split).documents} for split in CORPUS_SPLITS
    }
    assert not ids["train"] & ids["calib"]
    assert not ids["train"] & ids["eval"]
    assert not ids["calib"] & ids["eval"]
    assert set().union(*ids.values()) == {entry["path"] for entry in CORPUS}


@pytest.mark.parametrize("entry", CORPUS, ids=lambda entry: entry["path"])
def test_language_is_what_the_manifest_says(entry: dict) -> None:
    text = corpus_text(entry)
    polish = stopword_share(text, POLISH_STOPWORDS)
    english = stopword_share(text, ENGLISH_STOPWORDS)
    if entry["language"] == "pl":
        assert polish_letter_share(text) >= 0.03
        assert polish >= 0.08 > english
    else:
        assert polish_letter_share(text) < 0.005
        assert english >= 0.15 > polish


def all_documents() -> dict[str, tuple[str, str]]:
    """Every document of every set, keyed by a readable id, with its split."""
    documents = {entry["path"]: (entry["split"], corpus_text(entry)) for entry in CORPUS}
    for kind, records in (("sft", SFT), ("quality", QUALITY), ("anonymisation", ANONYMISATION)):
        for record in records:
            documents[record["id"]] = (kind, "\n".join(record_texts(kind, record)))
    return documents


def test_no_near_duplicates_anywhere() -> None:
    documents = all_documents()
    pairs = near_duplicates({key: text for key, (_, text) in documents.items()}, threshold=0.3)
    assert pairs == []


def test_personal_data_only_in_the_anonymisation_set() -> None:
    hits = {}
    for key, (split, text) in all_documents().items():
        if split == "anonymisation":
            continue
        found = personal_data.find(text)
        if split == "quality":  # spam and link lists may link, but only to reserved names
            found = [
                (kind, match)
                for kind, match in found
                if not (kind == "URL" and personal_data.RESERVED_URL.match(match))
            ]
        if found:
            hits[key] = found
    assert hits == {}


def test_sft_records_are_well_formed() -> None:
    assert len({record["id"] for record in SFT}) == len(SFT)
    languages = Counter(record["language"] for record in SFT)
    assert languages["pl"] >= 300 and languages["en"] >= 1
    qualities = Counter(record["quality"] for record in SFT)
    assert set(qualities) == {"high", "medium", "low"}
    assert min(qualities.values()) >= 0.08 * len(SFT)
    for record in SFT:
        roles = [message["role"] for message in record["messages"]]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles and roles == ["user", "assistant"] * (len(roles) // 2), record["id"]
        assert all(message["content"].strip() for message in record["messages"]), record["id"]
    assert sum(record["messages"][0]["role"] == "system" for record in SFT) >= 20
    user_turns = [sum(m["role"] == "user" for m in record["messages"]) for record in SFT]
    assert sum(turns >= 2 for turns in user_turns) >= 30


def test_quality_records_are_labelled() -> None:
    assert len(QUALITY) >= 300
    assert len({record["id"] for record in QUALITY}) == len(QUALITY)
    labels = Counter(record["label"] for record in QUALITY)
    assert set(labels) == {"HIGH", "MEDIUM", "LOW"}
    assert min(labels.values()) >= 80
    low_kinds = {record["kind"] for record in QUALITY if record["label"] == "LOW"}
    expected = {"seo-spam", "boilerplate", "mojibake", "garbled", "truncated", "link-list"}
    assert expected | {"shouting"} <= low_kinds
    assert all(record["text"].strip() for record in QUALITY)


def test_anonymisation_annotations_point_at_the_text() -> None:
    assert len(ANONYMISATION) >= 40
    types = Counter()
    for record in ANONYMISATION:
        for entity in record["entities"]:
            assert entity["text"] in record["text"], (record["id"], entity)
            types[entity["type"]] += 1
            if entity["type"] == "PESEL":
                assert personal_data.pesel_checksum_ok(entity["text"]), entity
        for keep in record["keep"]:
            assert keep in record["text"], (record["id"], keep)
    assert {"EMAIL", "PHONE", "URL", "ADDRESS", "PESEL", "IBAN"} <= set(types)
    assert min(types[kind] for kind in ("EMAIL", "PHONE", "URL", "ADDRESS")) >= 20


def test_detectors_find_the_anonymisation_sets_entities() -> None:
    """The personal-data check above can fail: its detectors fire on every annotated entity."""
    for record in ANONYMISATION:
        for entity in record["entities"]:
            assert personal_data.find(entity["text"]), (record["id"], entity)
