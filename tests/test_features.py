"""Stylometric features against values counted by hand on small Polish documents."""

import re

import numpy as np
import pytest

from training.data.features import (
    FEATURE_VERSION,
    FEATURES,
    compute_features,
    feature_definitions,
    feature_names,
)

# Two paragraphs, six lines: a title without punctuation, then one sentence per line; three
# lines are bullets, one repeats an earlier line.
DOCUMENT = "Koty\nAla ma kota.\nKot ma Alę!\n\n- Czy kot śpi?\n- Kot śpi.\n- Kot śpi.\n"
# Words: Koty | Ala ma kota | Kot ma Alę || Czy kot śpi | Kot śpi | Kot śpi        -> 14
# Lowercased types: koty ala ma kota kot alę czy śpi                              -> 8
# Occurring once: koty ala kota alę czy                                           -> 5
# Letters: 4 + 3+2+4 + 3+2+3 + 3+3+3 + 3+3 + 3+3 = 42; diacritics: ę, ś, ś, ś     -> 4
EXPECTED = {
    "word_count": 14,
    "type_token_ratio": 8 / 14,
    "hapax_ratio": 5 / 14,
    "diacritic_share": 4 / 42,
    "diacritic_share_s_acute": 3 / 42,
    "sentence_count": 6,  # the title ends at its line break
    "mean_sentence_len": 14 / 6,
    "max_sentence_len": 3,
    "question_sentence_share": 1 / 6,
    "exclamation_sentence_share": 1 / 6,
    "unterminated_sentence_share": 1 / 6,
    "paragraph_count": 2,
    "mean_paragraph_len": (7 + 7) / 2,
    "line_count": 6,
    "duplicate_line_share": 1 / 6,
    "bullet_line_share": 3 / 6,
    "top_word_share": 4 / 14,  # "kot": Kot, kot, Kot, Kot
    "char_count": len(DOCUMENT),
    "newline_share": 7 / len(DOCUMENT),
    "punct_share_period": 3 / len(DOCUMENT),
}


def column(matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, feature_names().index(name)]


def features_of(text: str, morphology: bool = False) -> dict[str, float]:
    row = compute_features([text], morphology=morphology)[0]
    return dict(zip(feature_names(), row.tolist(), strict=True))


def test_hand_counted_document() -> None:
    features = features_of(DOCUMENT)
    for name, expected in EXPECTED.items():
        assert features[name] == pytest.approx(expected, rel=1e-6), name


def test_structure_densities() -> None:
    text = "Napisz na [EMAIL] lub zadzwoń: [PHONE]. Strona: https://example.pl, &amp; <br/>"
    # Words: Napisz na EMAIL lub zadzwoń PHONE Strona https example pl amp br -> 12
    features = features_of(text)
    assert features["word_count"] == 12
    assert features["placeholder_density"] == pytest.approx(2 / 12)
    assert features["placeholder_density_email"] == pytest.approx(1 / 12)
    assert features["placeholder_density_iban"] == 0
    assert features["url_density"] == pytest.approx(1 / 12)
    assert features["email_density"] == 0
    assert features["html_entity_density"] == pytest.approx(1 / 12)
    assert features["html_tag_density"] == pytest.approx(1 / 12)


def test_part_of_speech_shares_follow_morfeusz() -> None:
    import morfeusz2

    # The first interpretation Morfeusz gives each word: the features' assumption, checked here
    # so a dictionary update that changes them fails loudly instead of shifting the shares.
    analyser = morfeusz2.Morfeusz(generate=False)
    first_class = {word: analyser.analyse(word)[0][2][2].split(":")[0] for word in
                   ("Koty", "Ala", "ma", "kota", "Kot", "Alę", "Czy", "kot", "śpi")}  # fmt: skip
    assert first_class == {
        "Koty": "subst", "Ala": "subst", "ma": "fin", "kota": "subst", "Kot": "subst",
        "Alę": "subst", "Czy": "conj", "kot": "subst", "śpi": "fin",
    }  # fmt: skip
    features = features_of(DOCUMENT, morphology=True)
    # Nouns: Koty Ala kota Kot Alę kot Kot Kot; verbs: ma ma śpi śpi śpi; conjunction: Czy.
    assert features["analysed_word_count"] == 14
    assert features["pos_noun_share"] == pytest.approx(8 / 14)
    assert features["pos_verb_share"] == pytest.approx(5 / 14)
    assert features["verb_finite_share"] == pytest.approx(5 / 14)
    assert features["pos_conjunction_share"] == pytest.approx(1 / 14)
    assert features["pos_adjective_share"] == 0
    assert features["verb_imperfective_share"] == 1
    assert np.isnan(features["adj_comparative_share"])  # no adjectives: no denominator
    # Cases the first readings allow: Koty (nom.acc.voc), Kot (a surname: any case) x3, Alę (acc)
    # allow the accusative; all but Alę allow the nominative; Koty and Kot (sg.pl) the plural.
    assert features["noun_case_acc_share"] == pytest.approx(5 / 8)
    assert features["noun_case_nom_share"] == pytest.approx(7 / 8)
    assert features["noun_plural_share"] == pytest.approx(4 / 8)


def test_finer_verb_forms() -> None:
    # Czytałem = czytał (praet) + em (aglt, 1st person); Idź: impt, 2nd person; spać: inf.
    features = features_of("Czytałem książkę. Idź spać!", morphology=True)
    assert features["pos_verb_share"] == pytest.approx(3 / 4)
    assert features["pos_noun_share"] == pytest.approx(1 / 4)
    for name in (
        "verb_past_share",
        "agglutinate_share",
        "first_person_share",
        "verb_imperative_share",
        "second_person_share",
        "verb_infinitive_share",
        "multi_segment_share",
    ):
        assert features[name] == pytest.approx(1 / 4), name
    assert features["noun_case_acc_share"] == 1


def test_names_and_definitions() -> None:
    names = feature_names()
    assert len(names) >= 100
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*", name) for name in names)
    definitions = feature_definitions()
    assert [name for name, _ in definitions] == names
    assert all(definition.strip() and "\n" not in definition for _, definition in definitions)
    assert {feature.group for feature in FEATURES} == {
        "lexical", "character", "sentence", "repetition", "structure", "morphology",
    }  # fmt: skip
    assert isinstance(FEATURE_VERSION, str) and FEATURE_VERSION


def test_shape_and_dtype() -> None:
    matrix = compute_features([DOCUMENT, "Drugi dokument.", ""], morphology=False)
    assert matrix.shape == (3, len(feature_names()))
    assert matrix.dtype == np.float32
    assert compute_features([], morphology=False).shape == (0, len(feature_names()))


@pytest.mark.parametrize("morphology", [False, True])
def test_empty_document(morphology: bool) -> None:
    row = compute_features([""], morphology=morphology)[0]
    assert not np.isinf(row).any()
    features = dict(zip(feature_names(), row.tolist(), strict=True))
    assert features["word_count"] == features["char_count"] == features["sentence_count"] == 0
    assert np.isnan(features["type_token_ratio"]) and np.isnan(features["letter_share"])


def test_morphology_off_keeps_columns_as_nan() -> None:
    matrix = compute_features([DOCUMENT], morphology=False)
    morphology = [i for i, feature in enumerate(FEATURES) if feature.group == "morphology"]
    assert len(morphology) >= 11
    assert np.isnan(matrix[0, morphology]).all()
    others = [i for i, feature in enumerate(FEATURES) if feature.group != "morphology"]
    assert not np.isnan(matrix[0, others]).all()


def test_morphology_changes_only_its_own_columns() -> None:
    with_morphology = compute_features([DOCUMENT], morphology=True)
    without = compute_features([DOCUMENT], morphology=False)
    morphology = np.array([feature.group == "morphology" for feature in FEATURES])
    np.testing.assert_array_equal(with_morphology[:, ~morphology], without[:, ~morphology])
    assert not np.isnan(with_morphology[:, morphology]).all()


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "cp1250"])
def test_mojibake_scores_higher_than_its_repair(encoding: str) -> None:
    repaired = "Zażółć gęślą jaźń. Łódź leży nad rzeką, a źródło jest w pobliżu."
    broken = repaired.encode("utf-8").decode(encoding, errors="replace")
    matrix = compute_features([repaired, broken], morphology=False)
    pairs = column(matrix, "mojibake_pair_share")
    assert pairs[0] == 0
    assert pairs[1] > 0.1
    assert column(matrix, "mojibake_lead_share")[1] > column(matrix, "mojibake_lead_share")[0]


@pytest.mark.parametrize("morphology", [False, True])
def test_batch_equals_one_document_at_a_time(morphology: bool) -> None:
    from calibration_data import load

    texts = [DOCUMENT, "", "Czytałem książkę. Idź spać!", *load("pl-en").texts[:6]]
    batch = compute_features(texts, morphology=morphology)
    one_by_one = np.vstack([compute_features([text], morphology=morphology) for text in texts])
    np.testing.assert_array_equal(batch, one_by_one)
    # Batches that split the list give the same rows, too.
    np.testing.assert_array_equal(compute_features(texts, morphology, batch_size=4), batch)
