"""The release folder from real artifacts of the one-step tiny Mistral (GGUF with and without an
imatrix, one HQQ) and a real eval of them: the index's and the cards' numbers against results.json,
names that do not collide, a renamed GGUF that still loads, refusals that leave nothing behind, and
the "when to use it" rule on hand-made rows."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from bielik_quant.release.folder import (
    Measured,
    ReleaseFolderError,
    assemble_release,
    when_to_use,
)
from quantize.artifact import MANIFEST, MODEL_CARD

NAME = "tiny"
N_CTX = 128


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, one_step_model: Path) -> dict[str, Any]:
    """Exports (GGUF Q2_K with and without an imatrix, from two roots; F16; HQQ 4-bit), a real
    eval of all of them on two windows, and its report."""
    from calibration_data import load
    from eval_quant.report import load_results, write_report
    from eval_quant.suite import Settings, load_text, run_suite
    from quantize.artifact import write_json
    from quantize.registry import ExportRequest, get_format
    from quantize.source import ModelSource

    root = tmp_path_factory.mktemp("release-inputs")
    source = ModelSource.open(one_step_model)
    gguf = get_format("gguf")
    calibration = load("pl-en", split="calib")
    with_imatrix = gguf.export(
        ExportRequest(source, root / "imatrix", ("F16", "Q2_K"), calibration, n_ctx=N_CTX)
    )
    plain = gguf.export(ExportRequest(source, root / "plain", ("Q2_K", "Q8_0"), imatrix=None))
    hqq = get_format("hqq").export(ExportRequest(source, root / "hqq", ("4bit-g64",)))
    artifacts = [a.path for a in [*with_imatrix, *plain, *hqq]]
    measured = artifacts[:-2] + artifacts[-1:]  # Q8_0 without imatrix stays unmeasured
    results = run_suite(
        one_step_model,
        measured,
        load_text("pl-en"),
        Settings(n_ctx=N_CTX, chunks=2, cache_dir=root / "cache"),
    )
    write_json(root / "results.json", results)
    report = root / "report"
    write_report(load_results([root / "results.json"]), report)
    return {
        "root": root,
        "artifacts": measured,
        "unmeasured": artifacts[-2],
        "results": root / "results.json",
        "report": report,
    }


@pytest.fixture(scope="module")
def release(inputs: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    out = inputs["root"] / "release"
    record = assemble_release(
        inputs["artifacts"], inputs["results"], inputs["report"], out, NAME, "apache-2.0"
    )
    return out, record


def rows_of(results: Path) -> dict[str, dict[str, Any]]:
    return {c["sha256"]: c for c in json.loads(results.read_text("utf-8"))["candidates"]}


def table(markdown: str, first_column: str) -> list[dict[str, str]]:
    """The Markdown table whose header starts with `first_column`, one dict per row."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append(line)
    split = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]  # noqa: E731
    header = split(block[0])
    return [dict(zip(header, split(line), strict=True)) for line in block[2:]]


def shown(cell: str) -> tuple[float, float]:
    """A printed number and half a unit of its last printed digit (the rounding it can carry)."""
    cell = cell.strip().lstrip("+")
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return float(cell), 0.5 * 10**-decimals


def assert_shows(cell: str, value: float, uncertainty: float | None = None) -> None:
    """`cell` ("v" or "v ± u") prints `value` (and `uncertainty`) rounded, not something else."""
    parts = cell.split(" ± ")
    printed, slack = shown(parts[0])
    assert abs(printed - value) <= slack * (1 + 1e-9), (cell, value)
    if uncertainty is not None and uncertainty > 0:
        printed, slack = shown(parts[1])
        assert abs(printed - uncertainty) <= slack * (1 + 1e-9), (cell, uncertainty)


def test_index_numbers_are_the_results_numbers(
    inputs: dict[str, Any], release: tuple[Path, dict[str, Any]]
) -> None:
    out, record = release
    rows = rows_of(inputs["results"])
    by_path = {a["path"]: a for a in record["artifacts"]}
    index = (out / "README.md").read_text("utf-8")
    assert index.startswith("---\nbase_model: one-step-mistral\n")
    assert "license: apache-2.0" in index.split("---")[1]
    lines = table(index, "File")
    assert len(lines) == len(inputs["artifacts"]) == len(record["artifacts"])
    for line in lines:
        link = re.fullmatch(r"\[(.+)\]\((.+)\)", line["File"])
        assert link and link[1] == link[2] and (out / link[1]).exists()
        artifact = by_path[str(Path(link[1]).parent) if link[1].endswith(".gguf") else link[1][:-1]]
        row = rows[artifact["results_row"]["sha256"]]
        s = row["statistics"]
        assert line["Quant"] == f"{row['format'].upper()} {row['variant']}"
        assert line["imatrix"] == {True: "yes", False: "no", None: "—"}[row["imatrix"]]
        size, unit = line["Size"].split()
        assert unit == "MiB"
        assert_shows(size, row["size_bytes"] / 2**20)
        assert_shows(line["bpw"], row["bits_per_weight"])
        assert_shows(line["PPL"], s["ppl"]["value"], s["ppl"]["uncertainty"])
        assert_shows(line["KLD"], s["kld"]["mean"], s["kld"]["uncertainty"])
        assert_shows(
            line["Same top p [%]"], 100 * s["same_top"]["value"], 100 * s["same_top"]["uncertainty"]
        )
        assert line["When to use it"]
    header = json.loads(inputs["results"].read_text("utf-8"))
    assert f"{header['chunks']:,} windows of n_ctx {N_CTX}" in index
    assert f"{header['tokens']['scored']:,} scored tokens" in index
    assert "Q2_K: the imatrix" in index  # the honesty paragraph for the pair
    # The pair differs in size by the imatrix's metadata only: the one with the higher KLD is
    # the one to skip, whichever it is on this model, if the difference exceeds the noise.
    pair = sorted(
        (line for line in lines if line["Quant"] == "GGUF Q2_K"),
        key=lambda line: float(line["KLD"].split(" ± ")[0]),
    )
    (low, u_low), (high, u_high) = (map(float, p["KLD"].split(" ± ")) for p in pair)
    assert not pair[0]["When to use it"].startswith("skip")
    beyond = high - low > math.hypot(u_low, u_high)
    assert pair[1]["When to use it"].startswith("skip: Q2_K (") == beyond


def test_every_card_carries_its_measured_row(
    inputs: dict[str, Any], release: tuple[Path, dict[str, Any]]
) -> None:
    out, record = release
    rows = rows_of(inputs["results"])
    for artifact in record["artifacts"]:
        card = (out / artifact["path"] / MODEL_CARD).read_text("utf-8")
        assert "appears in this card when" not in card
        assert "## Quality against the FP16 model" in card
        (line,) = table(card, "PPL")
        s = rows[artifact["results_row"]["sha256"]]["statistics"]
        assert_shows(line["PPL"], s["ppl"]["value"], s["ppl"]["uncertainty"])
        assert_shows(line["ΔPPL"], s["ppl_diff"]["value"], s["ppl_diff"]["uncertainty"])
        assert_shows(line["KLD"], s["kld"]["mean"], s["kld"]["uncertainty"])
        assert_shows(line["Mean Δp [%]"], 100 * s["p_diff"]["mean"])
        assert_shows(line["RMS Δp [%]"], 100 * s["rms_p_diff"]["value"])
        assert_shows(line["Same top p [%]"], 100 * s["same_top"]["value"])
        assert f"{N_CTX}" in card and "2 windows" in card
        manifest = json.loads((out / artifact["path"] / MANIFEST).read_text("utf-8"))
        assert manifest["variant"] in card and "license: apache-2.0" in card
    # The exported artifacts keep their own cards, untouched.
    for path in inputs["artifacts"]:
        assert "appears in this card when" in (path / MODEL_CARD).read_text("utf-8")


def test_without_imatrix_gets_its_own_name_and_still_loads(
    inputs: dict[str, Any], release: tuple[Path, dict[str, Any]]
) -> None:
    from eval_quant.models import describe, open_runner

    out, record = release
    places = [a["path"] for a in record["artifacts"]]
    assert len(set(places)) == len(places)
    q2 = {a["imatrix"]: a for a in record["artifacts"] if a["variant"] == "Q2_K"}
    plain, with_imatrix = Path(q2[False]["path"]), Path(q2[True]["path"])
    assert with_imatrix.name == "one-step-mistral-GGUF-Q2_K"
    assert plain == with_imatrix.with_name(with_imatrix.name + "-noimatrix")
    assert plain.parent.name == f"{NAME}-GGUF"
    f16 = next(a for a in record["artifacts"] if a["variant"] == "F16")
    assert f16["path"].endswith("/one-step-mistral-GGUF-F16")  # never has one, keeps its name
    manifest = json.loads((out / plain / MANIFEST).read_text("utf-8"))
    assert manifest["files"]["model"] == plain.name + ".gguf"
    assert manifest["imatrix"] is None
    assert sorted(p.name for p in (out / plain).iterdir()) == sorted(
        [MANIFEST, MODEL_CARD, plain.name + ".gguf"]
    )
    assert f"llama-cli -m {plain.name}.gguf" in (out / plain / MODEL_CARD).read_text("utf-8")

    info = describe(out / plain)
    assert (info.format, info.variant, info.imatrix) == ("gguf", "Q2_K", False)
    original = next(p for p in inputs["artifacts"] if str(p) == q2[False]["source"])
    tokens = list(range(1, 40))
    released = open_runner(info, N_CTX).logits(tokens)
    exported = open_runner(describe(original), N_CTX).logits(tokens)
    assert (released == exported).all()


def test_files_are_linked_and_listed_with_their_hashes(
    inputs: dict[str, Any], release: tuple[Path, dict[str, Any]]
) -> None:
    out, record = release
    listed = {f["path"]: f for f in record["files"]}
    on_disk = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != "release.json"
    }
    assert set(listed) == on_disk
    for path, entry in listed.items():
        data = (out / path).read_bytes()
        assert entry["size_bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert json.loads((out / "release.json").read_text("utf-8")) == record
    for artifact in record["artifacts"]:
        source = Path(artifact["source"])
        for file in source.rglob("*"):
            if file.is_file() and file.name not in (MANIFEST, MODEL_CARD):
                name = artifact["renamed"].get(file.name, file.relative_to(source).as_posix())
                assert os.path.samefile(file, out / artifact["path"] / name)  # hard link
        assert (source / MANIFEST).is_file()  # the original is never moved


def test_report_is_copied_unchanged(
    inputs: dict[str, Any], release: tuple[Path, dict[str, Any]]
) -> None:
    """test_report.py opens report.html in Chromium; the release must carry that very file."""
    out, _ = release
    for name in ("report.html", "report.md", "report.csv", "kld_vs_bpw.png"):
        assert (out / "report" / name).read_bytes() == (inputs["report"] / name).read_bytes()


def test_an_unmeasured_artifact_is_refused_and_nothing_is_written(
    inputs: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "release"
    artifacts = [*inputs["artifacts"], inputs["unmeasured"]]
    with pytest.raises(ReleaseFolderError, match=re.escape(str(inputs["unmeasured"]))) as error:
        assemble_release(artifacts, inputs["results"], inputs["report"], out, NAME)
    assert "no row in the results" in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no out, no staging sibling


def test_a_copied_artifact_is_matched_by_its_content(
    inputs: dict[str, Any], tmp_path: Path
) -> None:
    """An artifact moved after the eval has no row by path; its weights' hash finds the row."""
    moved = tmp_path / "moved" / inputs["artifacts"][0].name
    shutil.copytree(inputs["artifacts"][0], moved)
    record = assemble_release(
        [moved], inputs["results"], inputs["report"], tmp_path / "release", NAME
    )
    (artifact,) = record["artifacts"]
    assert artifact["source"] == str(moved) and artifact["variant"] == "F16"
    with pytest.raises(ReleaseFolderError, match="the same weights"):
        assemble_release(
            [inputs["artifacts"][0], moved],
            inputs["results"],
            inputs["report"],
            tmp_path / "r2",
            NAME,
        )


def test_rerun_replaces_the_release_and_a_foreign_folder_is_refused(
    inputs: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "release"
    assemble_release(inputs["artifacts"], inputs["results"], inputs["report"], out, NAME)
    record = assemble_release(
        inputs["artifacts"][:1], inputs["results"], inputs["report"], out, NAME
    )
    assert len(record["artifacts"]) == 1
    assert not (out / f"{NAME}-HQQ").exists()  # nothing of the old release is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", "utf-8")
    with pytest.raises(ReleaseFolderError, match="not a release folder"):
        assemble_release(inputs["artifacts"], inputs["results"], inputs["report"], foreign, NAME)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


# --- the "when to use it" rule on hand-made rows ------------------------------------------------

MIB = 2**20


def row(label: str, size_mib: float, kld: float, same_top: float = 0.9, **kw: Any) -> Measured:
    fields = {"format": "gguf", "variant": label, "imatrix": None, "kld_uncertainty": kld * 0.01}
    fields.update(kw)
    return Measured(
        label=label, size_bytes=int(size_mib * MIB), kld=kld, same_top=same_top, **fields
    )


def test_a_dominated_file_is_skipped_naming_the_smallest_better_one() -> None:
    rows = [
        row("F16", 100, 0.0001, 0.999),
        row("Q8_0", 53, 0.001, 0.98),
        row("WEIRD", 60, 0.01, 0.9),  # Q8_0 and Q6 are smaller and better
        row("Q6", 41, 0.005, 0.95),
        row("Q2", 20, 0.07, 0.73),
    ]
    lines = when_to_use(rows, 100 * MIB)
    assert lines[2].startswith("skip: Q6 is smaller and closer to FP16 (KLD 0.00500 vs 0.0100")
    assert not any(line.startswith("skip") for i, line in enumerate(lines) if i != 2)
    assert lines[0].startswith("the closest to FP16: keeps FP16's top token 99.90% of the time")
    assert lines[0].endswith("at 100% of its size")
    assert lines[4] == (
        "the smallest that keeps FP16's top token 73.0% of the time (KLD 0.0700) at 20% of its size"
    )
    assert lines[3] == "keeps FP16's top token 95.0% of the time (KLD 0.00500) at 41% of its size"


def test_formats_are_judged_apart_and_a_lone_file_says_so() -> None:
    rows = [row("Q4_K_M", 30, 0.005), row("w4g128", 40, 0.006, format="awq")]
    lines = when_to_use(rows, 100 * MIB)
    assert not lines[1].startswith("skip")  # a smaller, better GGUF does not run on vLLM
    assert lines[1].startswith("the only AWQ file worth having here:")


def test_same_size_within_noise_is_said() -> None:
    rows = [
        row("A", 30, 0.0100, kld_uncertainty=0.001),
        row("B", 30, 0.0105, kld_uncertainty=0.001),
    ]
    lines = when_to_use(rows, 100 * MIB)
    assert not any(line.startswith("skip") for line in lines)  # not told apart by the noise
    assert lines[0].startswith("the closest to FP16")
    assert lines[1].endswith("; as close as A within the uncertainty")
    measurably = [row("A", 30, 0.0100, kld_uncertainty=0.0001), row("B", 30, 0.0105)]
    assert when_to_use(measurably, 100 * MIB)[1].startswith("skip: A is as large and closer")
    smaller = [row("A", 20, 0.0104, kld_uncertainty=0.001), row("B", 30, 0.0105)]
    assert when_to_use(smaller, 100 * MIB)[1] == (
        "skip: A is smaller and closer to FP16 (KLD 0.0104 vs 0.0105, a difference within "
        "the uncertainty)"
    )


@pytest.mark.parametrize(
    ("with_kld", "without_kld", "winner", "where"),
    [(0.040, 0.050, "with", "beyond"), (0.054, 0.045, "without", "beyond"),
     (0.0452, 0.0450, "without", "within")],
)  # fmt: skip
def test_imatrix_pairs_say_which_measured_better(
    with_kld: float, without_kld: float, winner: str, where: str
) -> None:
    u = 0.001
    rows = [
        row("Q2_K", 20.01, with_kld, variant="Q2_K", imatrix=True, kld_uncertainty=u),
        row("Q2_K-no", 20, without_kld, variant="Q2_K", imatrix=False, kld_uncertainty=u),
    ]
    for line in when_to_use(rows, 100 * MIB):
        assert f"; {winner} the imatrix measured closer" in line
        assert f"{where} the uncertainty ±{math.hypot(u, u):.2g}" in line


def test_skip_marks_exactly_the_dominated_rows() -> None:
    """Against a brute-force size/KLD front on random rows, several formats mixed, some sizes
    within 1 % of each other."""
    rng = random.Random(7)
    for _ in range(50):
        rows = [
            row(f"r{i}", rng.choice([10, 10.05, 20, 30, 40]), rng.choice([0.01, 0.02, 0.03, 0.05]),
                format=rng.choice(["gguf", "hqq"]))
            for i in range(8)
        ]  # fmt: skip
        lines = when_to_use(rows, 100 * MIB)
        for r, line in zip(rows, lines, strict=True):
            dominated = any(
                o is not r
                and o.format == r.format
                and o.size_bytes <= 1.01 * r.size_bytes  # sizes within 1 % count as the same
                and o.kld < r.kld
                # smaller, or as large and closer beyond the two rows' combined uncertainty
                and (o.size_bytes < r.size_bytes / 1.01
                     or r.kld - o.kld > math.hypot(o.kld_uncertainty, r.kld_uncertainty))
                for o in rows
            )  # fmt: skip
            assert line.startswith("skip") == dominated


def test_the_suite_writes_the_schema_the_readers_document(inputs: dict[str, Any]) -> None:
    """eval_quant.schema describes results.json for every reader: a real file has its keys."""
    from eval_quant import schema

    def keys(typed: Any) -> set[str]:
        return set(typed.__required_keys__) | set(typed.__optional_keys__)

    data = json.loads(inputs["results"].read_text("utf-8"))
    assert data["schema"] == schema.SCHEMA
    assert set(data) == keys(schema.Results)
    assert set(data["reference"]) == keys(schema.Model)
    for row in data["candidates"]:
        assert set(row) == keys(schema.Candidate)
        assert set(row["statistics"]) == keys(schema.Statistics)
        for name in ("ppl", "ppl_base", "ppl_diff", "rms_p_diff", "same_top"):
            assert set(row["statistics"][name]) == keys(schema.Estimate)
        for name in ("kld", "p_diff"):
            assert {"mean", "uncertainty", "max", "median", "min"} <= set(row["statistics"][name])


def test_a_report_from_other_results_is_refused(inputs: dict[str, Any], tmp_path: Path) -> None:
    """The index, the cards and the report beside them must show the same measurements."""
    from eval_quant.report import load_results, write_report

    data = json.loads(inputs["results"].read_text("utf-8"))
    dropped = data["candidates"].pop()
    (tmp_path / "fewer.json").write_text(json.dumps(data), "utf-8")
    write_report(load_results([tmp_path / "fewer.json"]), tmp_path / "report")
    with pytest.raises(ReleaseFolderError, match="written from other results") as error:
        assemble_release(
            inputs["artifacts"], inputs["results"], tmp_path / "report", tmp_path / "out", NAME
        )
    assert str(Path(dropped["path"])) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_file_as_out_is_refused(inputs: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "release"
    out.write_text("mine", "utf-8")
    with pytest.raises(ReleaseFolderError, match="not a release folder"):
        assemble_release(inputs["artifacts"], inputs["results"], inputs["report"], out, NAME)
    assert out.read_text("utf-8") == "mine"
