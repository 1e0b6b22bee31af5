"""The quality report from fabricated results.json files: table contents and order, merging,
refusals, plots, and the HTML page as headless Chromium renders it."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eval_quant import report
from eval_quant.report import ReportError, load_results, write_report

REFERENCE_PPL = 12.34
FORMAT_ORDER = ["gguf", "awq", "hqq"]
# (format, variant, bits per weight, imatrix): every GGUF quant with and without an imatrix where
# llama.cpp offers both, one AWQ row, two HQQ rows (one with no known bpw, to sort last).
CANDIDATES = [
    ("gguf", "F16", 16.0, False),
    ("gguf", "Q8_0", 8.5, False),
    ("gguf", "Q6_K", 6.56, False),
    ("gguf", "Q4_K_M", 4.89, False),
    ("gguf", "Q4_K_M", 4.89, True),
    ("gguf", "Q3_K_M", 3.91, False),
    ("gguf", "Q3_K_M", 3.91, True),
    ("gguf", "IQ2_XS", 2.31, True),
    ("awq", "W4-G128", 4.25, None),
    ("hqq", "4bit-g64", 4.5, None),
    ("hqq", "custom", None, None),
]


def fake_candidate(fmt: str, variant: str, bpw: float | None, imatrix: bool | None) -> dict:
    """Plausible statistics: KLD halves with each extra bit, an imatrix takes off 30 %."""
    seed = int(hashlib.sha256(f"{fmt}{variant}{imatrix}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    bits = bpw if bpw is not None else 4.0
    kld = 3.0 * 2**-bits * (0.7 if imatrix else 1.0) * rng.uniform(0.9, 1.1)
    # Per-token KLD is roughly log-normal; scale it so its mean is `kld`.
    sigma = 1.5
    samples = rng.lognormal(math.log(kld) - sigma**2 / 2, sigma, 4000)
    ppl = REFERENCE_PPL * (1 + 0.8 * kld)
    return {
        "path": f"/models/{fmt}/{variant}",
        "name": f"tiny-mistral-{fmt.upper()}-{variant}",
        "format": fmt,
        "variant": variant,
        "imatrix": imatrix,
        "size_bytes": int(7.24e9 * bits / 8),
        "bits_per_weight": bpw,
        "sha256": hashlib.sha256(f"{fmt}{variant}{imatrix}".encode()).hexdigest(),
        "statistics": {
            "count": 5100,
            "ppl": {"value": ppl, "uncertainty": ppl * rng.uniform(0.008, 0.012)},
            "ppl_base": {"value": REFERENCE_PPL, "uncertainty": 0.123456},
            "correlation": 0.998,
            "ln_ppl_ratio": {"value": math.log(ppl / REFERENCE_PPL), "uncertainty": 0.001},
            "ppl_ratio": {"value": ppl / REFERENCE_PPL, "uncertainty": 0.001},
            "ppl_diff": {"value": ppl - REFERENCE_PPL, "uncertainty": kld * rng.uniform(0.1, 0.3)},
            "kld": {
                "mean": kld,
                "uncertainty": kld * 0.03,
                "error_bound": kld * 1e-4,
                "max": float(samples.max()),
                "median": float(np.median(samples)),
                "min": float(samples.min()),
            },
            "p_diff": {"mean": -0.1 * kld * rng.uniform(0.5, 1.5), "uncertainty": 0.02 * kld},
            "rms_p_diff": {"value": 0.2 * math.sqrt(kld), "uncertainty": 0.001},
            "same_top": {"value": 1 - 0.3 * math.sqrt(kld), "uncertainty": 0.003},
            "bits_per_byte": 1.93,
            "bits_per_byte_base": 1.91,
        },
        "kld_quantiles": np.quantile(samples, np.linspace(0, 1, 101)).tolist(),
        "chunks": [],
    }


def fake_results(
    candidates: list[tuple] = CANDIDATES,
    reference_sha: str = "a1" * 32,
    text_sha: str = "b2" * 32,
    n_ctx: int = 512,
) -> dict[str, Any]:
    rows = [fake_candidate(*c) for c in candidates]
    random.Random(1).shuffle(rows)  # the report must sort, not rely on input order
    return {
        "schema": "bielik-quant.eval/1",
        "created_at": "2026-11-29T04:00:00+00:00",
        "command": "bielik-quant eval --reference ... --candidate ...",
        "versions": {"bielik-quant": "0.1.0", "numpy": "2.4.6", "llama-cpp-python": "0.3.36"},
        "text": {"name": "pl-en:eval", "sha256": text_sha, "characters": 123456},
        "n_ctx": n_ctx,
        "chunks": 20,
        "tokens": {"text": 12000, "evaluated": 10240, "scored": 5100, "scored_bytes": 21000},
        "tokenizer_sha256": "c3" * 32,
        "reference": {
            "path": "/models/tiny-mistral",
            "name": "tiny-mistral",
            "format": "hf",
            "variant": "BF16",
            "imatrix": None,
            "size_bytes": 14_480_000_000,
            "bits_per_weight": 16.0,
            "sha256": reference_sha,
        },
        "reference_stats": {"ppl": REFERENCE_PPL, "bits_per_byte": 1.9},
        "cache": {
            "path": "/cache/x.safetensors",
            "key": "d4" * 32,
            "size_bytes": 1234567,
            "logit_error_max": 4.2e-6,
            "logit_error_mean": 2.1e-6,
            "reused": True,
        },
        "candidates": rows,
    }


def save(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def expected_order(rows: list[dict]) -> list[tuple]:
    """(format, variant, imatrix) in table order, from the input alone."""

    def key(c: dict) -> tuple:
        bpw = c["bits_per_weight"]
        # A quant with and without imatrix has the same bpw: the one without comes first.
        first = FORMAT_ORDER.index(c["format"]), -bpw if bpw is not None else math.inf
        return (*first, bool(c["imatrix"]))

    ordered = sorted(rows, key=key)
    return [(c["format"], c["variant"], c["imatrix"]) for c in ordered]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("report")
    data = fake_results()
    results = load_results([save(data, tmp / "results.json")])
    return data, write_report(results, tmp / "out")


def by_key(data: dict) -> dict[tuple, dict]:
    return {(c["format"], c["variant"], c["imatrix"]): c for c in data["candidates"]}


def test_csv_has_every_row_with_the_input_numbers(written: tuple[dict, dict[str, Path]]) -> None:
    data, files = written
    with files["csv"].open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["role"] == "reference"
    assert float(rows[0]["ppl"]) == REFERENCE_PPL
    assert float(rows[0]["ppl_uncertainty"]) == 0.123456
    candidates = rows[1:]
    imatrix = {"yes": True, "no": False, "": None}
    keys = [(r["format"], r["quant"], imatrix[r["imatrix"]]) for r in candidates]
    assert keys == expected_order(data["candidates"])
    inputs = by_key(data)
    for row, key in zip(candidates, keys, strict=True):
        c, s = inputs[key], inputs[key]["statistics"]
        assert row["role"] == "candidate"
        assert row["sha256"] == c["sha256"]
        assert int(row["size_bytes"]) == c["size_bytes"]
        bpw = c["bits_per_weight"]
        assert (float(row["bits_per_weight"]) if row["bits_per_weight"] else None) == bpw
        # Full precision: the values round-trip exactly.
        assert float(row["ppl"]) == s["ppl"]["value"]
        assert float(row["ppl_uncertainty"]) == s["ppl"]["uncertainty"]
        assert float(row["ppl_diff"]) == s["ppl_diff"]["value"]
        assert float(row["ppl_diff_uncertainty"]) == s["ppl_diff"]["uncertainty"]
        assert float(row["kld"]) == s["kld"]["mean"]
        assert float(row["kld_error_bound"]) == s["kld"]["error_bound"]
        assert float(row["mean_p_diff_pct"]) == pytest.approx(100 * s["p_diff"]["mean"], rel=1e-12)
        assert float(row["rms_p_diff_pct"]) == pytest.approx(100 * s["rms_p_diff"]["value"])
        assert float(row["same_top_pct"]) == pytest.approx(100 * s["same_top"]["value"])
        assert int(row["tokens"]) == 5100


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The results table of report.md, one dict per row, by column heading."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def parse_pm(cell: str) -> tuple[float, float]:
    value, uncertainty = cell.split(" ± ")
    return float(value), float(uncertainty)


def test_markdown_table_groups_sorts_and_shows_the_numbers(
    written: tuple[dict, dict[str, Path]],
) -> None:
    data, files = written
    rows = markdown_rows(files["md"].read_text(encoding="utf-8"))
    assert list(rows[0]) == [
        "Format", "Quant", "imatrix", "Size [GiB]", "bpw", "PPL", "ΔPPL", "KLD",
        "Mean Δp [%]", "RMS Δp [%]", "Same top p [%]",
    ]  # fmt: skip
    reference, candidates = rows[0], rows[1:]
    assert reference["Quant"] == "BF16 (reference)"
    assert parse_pm(reference["PPL"])[0] == pytest.approx(REFERENCE_PPL, abs=0.01)
    imatrix = {"yes": True, "no": False, "—": None}
    keys = [(r["Format"].lower(), r["Quant"], imatrix[r["imatrix"]]) for r in candidates]
    assert keys == expected_order(data["candidates"])
    inputs = by_key(data)
    for row, key in zip(candidates, keys, strict=True):
        s = inputs[key]["statistics"]
        for column, name in (("PPL", "ppl"), ("ΔPPL", "ppl_diff")):
            value, uncertainty = parse_pm(row[column])
            # The uncertainty to two significant digits, the value to the same decimal place.
            assert uncertainty == pytest.approx(s[name]["uncertainty"], rel=0.05)
            assert abs(value - s[name]["value"]) <= 0.05 * s[name]["uncertainty"]
        assert row["ΔPPL"].startswith("+")
        assert float(row["KLD"]) == pytest.approx(s["kld"]["mean"], rel=1e-4)
        assert float(row["Mean Δp [%]"]) == pytest.approx(100 * s["p_diff"]["mean"], abs=6e-4)
        assert float(row["RMS Δp [%]"]) == pytest.approx(100 * s["rms_p_diff"]["value"], abs=6e-4)
        assert float(row["Same top p [%]"]) == pytest.approx(100 * s["same_top"]["value"], abs=6e-3)
        bpw = inputs[key]["bits_per_weight"]
        assert row["bpw"] == ("—" if bpw is None else f"{bpw:.2f}")


def test_markdown_text_describes_the_run(written: tuple[dict, dict[str, Path]]) -> None:
    data, files = written
    text = files["md"].read_text(encoding="utf-8")
    for fact in (
        "tiny-mistral",
        data["reference"]["sha256"][:12],
        "pl-en:eval",
        data["text"]["sha256"][:12],
        "123,456 characters",
        "n_ctx 512",
        "20 chunks",
        "10,240 evaluated",
        "5,100 scored",
        "within 4.2e-06 of the",
        "kld_error_bound",
        "llama-cpp-python 0.3.36",
        "2026-11-29T04:00:00+00:00",
        "KL(reference‖quant)",
        "second half of each n_ctx window",
    ):
        assert fact in text, fact
    for png in ("kld_vs_bpw.png", "ppl_vs_size.png", "kld_distribution.png"):
        assert f"]({png})" in text


def test_plots_are_png_images(written: tuple[dict, dict[str, Path]]) -> None:
    import matplotlib.image

    _, files = written
    for name in ("kld_vs_bpw", "ppl_vs_size", "kld_distribution"):
        path = files[name]
        assert path.name == f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, channels = matplotlib.image.imread(path).shape
        assert height > 300 and width > 500 and channels in (3, 4)
    # One box per candidate: the distribution plot grows with the number of quants.
    assert matplotlib.image.imread(files["kld_distribution"]).shape[0] > 11 * 0.3 * 110


def test_html_is_self_contained(written: tuple[dict, dict[str, Path]]) -> None:
    _, files = written
    html = files["html"].read_text(encoding="utf-8")
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert len(sources) == 3
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert (
        "<link" not in html
        and "<script" not in html
        and "http" not in html.replace("http-equiv", "")
    )


def test_merge_keeps_the_later_row_of_a_repeated_candidate(tmp_path: Path) -> None:
    first = fake_results(CANDIDATES[:5])
    second = fake_results(CANDIDATES[3:])
    repeated = next(c for c in second["candidates"] if c["variant"] == "Q4_K_M" and c["imatrix"])
    repeated["statistics"]["ppl"]["value"] = 99.5
    second["versions"]["llama-cpp-python"] = "0.3.37"
    results = load_results([save(first, tmp_path / "a.json"), save(second, tmp_path / "b.json")])
    assert len(results.candidates) == len(CANDIDATES)
    assert len({c.model.sha256 for c in results.candidates}) == len(CANDIDATES)
    merged = next(c for c in results.candidates if c.model.sha256 == repeated["sha256"])
    assert merged.ppl.value == 99.5
    assert [s.path.name for s in results.sources] == ["a.json", "b.json"]
    files = write_report(results, tmp_path / "out")
    text = files["md"].read_text(encoding="utf-8")
    assert "llama-cpp-python 0.3.36 / 0.3.37" in text
    assert "99.5" in text


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"reference_sha": "ee" * 32}, "reference sha256"),
        ({"text_sha": "ff" * 32}, "text sha256"),
        ({"n_ctx": 1024}, "n_ctx"),
    ],
)
def test_merge_refuses_different_runs(tmp_path: Path, change: dict, what: str) -> None:
    a = save(fake_results(CANDIDATES[:2]), tmp_path / "a.json")
    b = save(fake_results(CANDIDATES[2:4], **change), tmp_path / "other-run.json")
    with pytest.raises(ReportError, match=re.escape(what)) as error:
        load_results([a, b])
    message = str(error.value)
    assert "other-run.json" in message and "\n" not in message
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize(
    "content", ["{not json", json.dumps({"candidates": []}), json.dumps([1, 2])]
)
def test_refuses_a_file_that_is_not_results(tmp_path: Path, content: str) -> None:
    good = save(fake_results(CANDIDATES[:2]), tmp_path / "good.json")
    bad = tmp_path / "notes.json"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(ReportError, match=r"notes\.json"):
        load_results([good, bad])


def test_refuses_a_candidate_without_statistics(tmp_path: Path) -> None:
    data = fake_results(CANDIDATES[:2])
    del data["candidates"][1]["statistics"]
    with pytest.raises(ReportError, match=r"broken\.json"):
        load_results([save(data, tmp_path / "broken.json")])


def test_a_failure_leaves_no_report_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = load_results([save(fake_results(), tmp_path / "results.json")])
    out = tmp_path / "out"

    def broken(*args: Any) -> None:
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "_plot_kld_distribution", broken)
    with pytest.raises(RuntimeError):
        write_report(results, out)
    assert not out.exists()  # no report files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no staging left over


@pytest.mark.parametrize("stop_at", [1, 2])
def test_an_interrupted_replacement_is_the_old_report_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_at: int
) -> None:
    """Interrupted after the `stop_at`-th rename while a new report replaces an old one, `out`
    holds the whole old report, the whole new one, or nothing: never a mix of the two."""
    out = tmp_path / "out"
    snapshot = lambda: {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}  # noqa: E731
    write_report(load_results([save(fake_results(CANDIDATES[:3]), tmp_path / "old.json")]), out)
    old = snapshot()
    new_results = load_results([save(fake_results(CANDIDATES[3:6]), tmp_path / "new.json")])
    calls = [0]

    def interrupting(real: Any) -> Any:
        def rename(*args: Any, **kwargs: Any) -> Any:
            real(*args, **kwargs)
            calls[0] += 1
            if calls[0] == stop_at:
                raise KeyboardInterrupt

        return rename

    monkeypatch.setattr(os, "replace", interrupting(os.replace))
    monkeypatch.setattr(os, "rename", interrupting(os.rename))
    with pytest.raises(KeyboardInterrupt):
        write_report(new_results, out)
    monkeypatch.undo()
    left = snapshot()
    whole_new = set(left) == set(old) and not set(left.items()) & set(old.items())
    assert left in (old, {}) or whole_new
    # The next run finishes cleanly and leaves no hidden directories behind.
    write_report(new_results, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "old.json", "out"]


def test_zero_uncertainty_and_zero_kld(tmp_path: Path) -> None:
    """A run with few tokens has no uncertainties (llama.cpp's rule); F16 may have KLD 0."""
    data = fake_results(CANDIDATES[:3])
    for c in data["candidates"]:
        for name in ("ppl", "ppl_diff"):
            c["statistics"][name]["uncertainty"] = 0.0
        if c["variant"] == "F16":
            c["statistics"]["kld"]["mean"] = 0.0
            c["kld_quantiles"] = [0.0] * 101
    files = write_report(load_results([save(data, tmp_path / "r.json")]), tmp_path / "out")
    rows = markdown_rows(files["md"].read_text(encoding="utf-8"))[1:]
    assert [r["Quant"] for r in rows] == ["F16", "Q8_0", "Q6_K"]
    for row in rows:
        assert "±" not in row["PPL"] and "±" not in row["ΔPPL"]
        assert float(row["PPL"]) > REFERENCE_PPL
    assert rows[0]["KLD"] == "0"
    assert all(files[name].stat().st_size > 1000 for name in report.PLOTS)


CHROMIUM = Path("/usr/bin/chromium")


def test_html_renders_in_chromium(written: tuple[dict, dict[str, Path]]) -> None:
    # CI installs both, so there a missing browser is a failure, not a skip.
    missing = pytest.fail if os.environ.get("CI") else pytest.skip
    if not CHROMIUM.exists():
        missing("Debian chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        missing("Python playwright is not installed (pip install 'bielik-quant[dev]')")
    data, files = written
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
            ],
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(files["html"].as_uri(), wait_until="load")
            rows = page.locator("table#results tbody tr")
            assert rows.count() == len(data["candidates"]) + 1
            assert "(reference)" in rows.nth(0).inner_text()
            widths = page.eval_on_selector_all(
                "img", "images => images.map(i => i.complete ? i.naturalWidth : 0)"
            )
            assert len(widths) == 3 and all(w > 0 for w in widths)
        finally:
            browser.close()
    external = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert requests and not external


def test_a_folder_with_other_files_is_refused_and_kept(tmp_path: Path) -> None:
    """The report folder is replaced whole, so one holding anything else is not touched."""
    results = load_results([save(fake_results(CANDIDATES[:2]), tmp_path / "results.json")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ReportError, match=r"notes\.txt"):
        write_report(results, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("without", "with_", "verb", "where", "conclusion"),
    [
        ((0.0446, 0.0010), (0.0539, 0.0015), "raised", "beyond", "it does not help at this level"),
        ((0.0539, 0.0010), (0.0446, 0.0015), "lowered", "beyond", "it helps at this level"),
        ((0.0451, 0.0010), (0.0455, 0.0015), "raised", "within", "its effect at this level is "
         "within the noise"),
        # Just beyond and just within the combined uncertainty 0.0018 (not 0.0025 = u₁ + u₂).
        ((0.0451, 0.0010), (0.0473, 0.0015), "raised", "beyond", "it does not help at this level"),
        ((0.0473, 0.0010), (0.0457, 0.0015), "lowered", "within", "its effect at this level is "
         "within the noise"),
    ],
)  # fmt: skip
def test_the_report_says_in_words_whether_the_imatrix_helps(
    tmp_path: Path,
    without: tuple[float, float],
    with_: tuple[float, float],
    verb: str,
    where: str,
    conclusion: str,
) -> None:
    """Judged by KLD against sqrt(u₁² + u₂²); a variant measured only one way gets no sentence."""
    data = fake_results(
        [("gguf", "Q8_0", 8.5, True), ("gguf", "Q2_K", 2.63, False), ("gguf", "Q2_K", 2.63, True)]
    )
    for c in data["candidates"]:
        if c["variant"] == "Q2_K":
            kld, uncertainty = with_ if c["imatrix"] else without
            c["statistics"]["kld"].update(mean=kld, uncertainty=uncertainty)
    files = write_report(load_results([save(data, tmp_path / "r.json")]), tmp_path / "out")
    noise = math.sqrt(without[1] ** 2 + with_[1] ** 2)  # 0.0018
    expected = (
        f"Q2_K: the imatrix {verb} KLD {without[0]} → {with_[0]} ({where} the uncertainty "
        f"±{noise:.2g})"
    )
    for kind in ("md", "html"):
        text = files[kind].read_text(encoding="utf-8")
        assert "Does the importance matrix help?" in text
        notes = [line for line in text.splitlines() if "the imatrix" in line and "KLD" in line]
        assert len(notes) == 1 and expected in notes[0]
        assert f"; on this model {conclusion}." in notes[0]
        assert "Q8_0:" not in text


def test_no_imatrix_paragraph_without_a_pair(tmp_path: Path) -> None:
    data = fake_results(CANDIDATES[:3])
    files = write_report(load_results([save(data, tmp_path / "r.json")]), tmp_path / "out")
    assert "Does the importance matrix help?" not in files["md"].read_text(encoding="utf-8")
