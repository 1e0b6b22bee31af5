"""The quality report: results.json files of `bielik-quant eval` as a table, plots and prose.

The table follows Table 8 of the Bielik 7B paper (one row per quant, grouped by format, sorted by
bits per weight); it is written as Markdown, CSV (full precision, for further analysis) and one
self-contained HTML page (CSS inline, plots embedded as PNG data URIs, so it can be mailed or
attached to a release without its folder).
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eval_quant.errors import EvalError
from eval_quant.schema import REQUIRED, ROW_KEY, SCHEMA
from quantize.model_card import number, plus_minus, significant

GIB = 2**30
# Formats in the order the table shows them; any other format follows, alphabetically.
FORMAT_ORDER = ("gguf", "hf", "awq", "gptq", "hqq", "mlx", "exl2")
PLOTS = ("kld_vs_bpw", "ppl_vs_size", "kld_distribution")
COLUMNS = (
    "Format", "Quant", "imatrix", "Size [GiB]", "bpw", "PPL", "ΔPPL", "KLD",
    "Mean Δp [%]", "RMS Δp [%]", "Same top p [%]",
)  # fmt: skip
CSV_COLUMNS = (
    "role", "format", "quant", "name", "imatrix", "size_bytes", "size_gib", "bits_per_weight",
    "ppl", "ppl_uncertainty", "ppl_diff", "ppl_diff_uncertainty",
    "kld", "kld_uncertainty", "kld_error_bound",
    "mean_p_diff_pct", "mean_p_diff_pct_uncertainty", "rms_p_diff_pct",
    "rms_p_diff_pct_uncertainty", "same_top_pct", "same_top_pct_uncertainty",
    "tokens", "sha256",
)  # fmt: skip
EXPLANATIONS = (
    ("Quant", "the variant (GGUF quant type, or the exporter's name for its setting)."),
    ("imatrix", "whether an importance matrix guided the quantization; — where not applicable."),
    ("Size [GiB]", "size of the model's weight files in GiB (2³⁰ bytes)."),
    ("bpw", "bits per weight as the exporter reports it (size of the quantized tensors)."),
    ("PPL", "perplexity exp(mean -ln p(next token)) over the scored tokens, ± standard error."),
    ("ΔPPL", "PPL(quant) - PPL(reference) on the same tokens, ± standard error of the difference."),
    (
        "KLD",
        "mean KL(reference‖quant) per scored token, in nats, over the full vocabulary, on the "
        "second half of each n_ctx window, as llama-perplexity --kl-divergence computes it.",
    ),
    ("Mean Δp", "mean of p_quant - p_reference of the correct next token, in percentage points."),
    ("RMS Δp", "root mean square of that difference: how much the probabilities move at all."),
    ("Same top p", "share of tokens whose most probable next token is the reference's."),
)


class ReportError(EvalError):
    """A results file the report cannot use, or an output folder that is not a report's."""


@dataclass(frozen=True)
class Model:
    name: str
    format: str
    variant: str
    imatrix: bool | None
    size_bytes: int
    bits_per_weight: float | None
    sha256: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Model:
        return cls(
            name=data["name"],
            format=data["format"],
            variant=data.get("variant") or data["name"],
            imatrix=data.get("imatrix"),
            size_bytes=int(data["size_bytes"]),
            bits_per_weight=_float_or_none(data.get("bits_per_weight")),
            sha256=data[ROW_KEY],
        )

    @property
    def label(self) -> str:
        """Short name for plots: format, variant and imatrix (GGUF names repeat without it)."""
        suffix = {True: " (imatrix)", False: "", None: ""}[self.imatrix]
        return f"{self.format.upper()} {self.variant}{suffix}"


@dataclass(frozen=True)
class Estimate:
    value: float
    uncertainty: float


@dataclass(frozen=True)
class Candidate:
    model: Model
    count: int
    ppl: Estimate
    ppl_base: Estimate
    ppl_diff: Estimate
    kld: Estimate
    kld_error_bound: float | None  # |reported KLD - exact KLD| ≤ this (the cached reference)
    p_diff: Estimate  # fractions, as in results.json
    rms_p_diff: Estimate
    same_top: Estimate
    kld_quantiles: tuple[float, ...]  # at fractions 0, 0.01, ..., 1; empty if absent

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        stats = data["statistics"]
        kld = stats["kld"]
        return cls(
            model=Model.from_json(data),
            count=int(stats["count"]),
            ppl=_estimate(stats["ppl"]),
            ppl_base=_estimate(stats["ppl_base"]),
            ppl_diff=_estimate(stats["ppl_diff"]),
            kld=Estimate(float(kld["mean"]), float(kld["uncertainty"])),
            kld_error_bound=_float_or_none(kld.get("error_bound")),
            p_diff=Estimate(float(stats["p_diff"]["mean"]), float(stats["p_diff"]["uncertainty"])),
            rms_p_diff=_estimate(stats["rms_p_diff"]),
            same_top=_estimate(stats["same_top"]),
            kld_quantiles=tuple(float(q) for q in data.get("kld_quantiles") or ()),
        )


@dataclass(frozen=True)
class Source:
    path: Path
    created_at: str
    versions: dict[str, str]


@dataclass(frozen=True)
class Results:
    """Merged results files: one reference, text and n_ctx; candidates unique by sha256."""

    reference: Model
    reference_ppl: float
    text: dict[str, Any]
    n_ctx: int
    chunks: int
    tokens: dict[str, Any]
    cache: dict[str, Any]
    sources: tuple[Source, ...]
    candidates: tuple[Candidate, ...]

    @property
    def reference_ppl_uncertainty(self) -> float | None:
        """PPL(base)'s standard error: every candidate scores the same tokens, so any one has it."""
        return self.candidates[0].ppl_base.uncertainty if self.candidates else None

    def sorted_candidates(self) -> list[Candidate]:
        """Table order: grouped by format, then bits per weight descending (unknown last)."""

        def key(c: Candidate) -> tuple[Any, ...]:
            m = c.model
            fmt = FORMAT_ORDER.index(m.format) if m.format in FORMAT_ORDER else len(FORMAT_ORDER)
            bpw = -m.bits_per_weight if m.bits_per_weight is not None else math.inf
            imatrix = {False: 0, True: 1, None: 2}[m.imatrix]
            return (fmt, m.format, bpw, -m.size_bytes, m.variant, imatrix)

        return sorted(self.candidates, key=key)


def load_results(paths: Sequence[Path]) -> Results:
    """Read and merge results files; a candidate in several files keeps the later file's row."""
    if not paths:
        raise ReportError("no results files given")
    first: dict[str, Any] | None = None
    first_path = paths[0]
    header: dict[str, Any] = {}
    sources: list[Source] = []
    candidates: dict[str, Candidate] = {}
    for path in paths:
        data = _read(Path(path))
        if first is None:
            first = data
        else:
            _check_same(first, first_path, data, Path(path))
        header = data  # the later file's header describes the merged run best
        sources.append(Source(Path(path), str(data.get("created_at", "")), data["versions"]))
        for row in data["candidates"]:
            try:
                candidate = Candidate.from_json(row)
            except (KeyError, TypeError, ValueError) as e:
                name = row.get("name", "?") if isinstance(row, dict) else "?"
                raise ReportError(f"{path}: candidate {name}: missing or invalid {e}") from e
            candidates.pop(candidate.model.sha256, None)  # re-insert: later file, later position
            candidates[candidate.model.sha256] = candidate
    try:
        return Results(
            reference=Model.from_json(header["reference"]),
            reference_ppl=float(header["reference_stats"]["ppl"]),
            text=header["text"],
            n_ctx=int(header["n_ctx"]),
            chunks=int(header["chunks"]),
            tokens=header["tokens"],
            cache=header.get("cache") or {},
            sources=tuple(sources),
            candidates=tuple(candidates.values()),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ReportError(f"{paths[-1]}: results file lacks field {e}") from e


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not a readable JSON results file ({e})") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportError(
            f'{path}: not a results file of `bielik-quant eval` (no "schema": "{SCHEMA}")'
        )
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ReportError(f"{path}: results file lacks {', '.join(missing)}")
    return data


def _check_same(a: dict[str, Any], a_path: Path, b: dict[str, Any], b_path: Path) -> None:
    """Rows from different references, texts or contexts are not comparable: refuse to merge."""
    checks = (
        ("reference sha256", lambda d: d["reference"]["sha256"]),
        ("text sha256", lambda d: d["text"]["sha256"]),
        ("n_ctx", lambda d: d["n_ctx"]),
    )
    for what, get in checks:
        try:
            va, vb = get(a), get(b)
        except (KeyError, TypeError) as e:
            raise ReportError(f"{b_path}: results file lacks {what}") from e
        if va != vb:
            raise ReportError(
                f"{b_path}: {what} {_short(vb)} differs from {_short(va)} in {a_path}"
            )


def write_report(results: Results, out_dir: Path) -> dict[str, Path]:
    """Write report.md, report.csv, report.html and the plots into `out_dir`; their paths by kind.

    `out_dir` is the report's own directory, made whole in a hidden sibling and renamed into
    place (quantize.artifact.staged, as artifacts are): an interrupted or failed run leaves the
    previous report or none, never a mix of old and new files.
    """
    from quantize.artifact import staged

    out_dir = Path(os.path.abspath(out_dir))  # `--out .` has no name to stage beside
    if out_dir.exists():  # it is replaced whole, so it must hold nothing but a report
        if not out_dir.is_dir():
            raise ReportError(f"{out_dir} is a file; --out names the report's folder")
        others = sorted({p.name for p in out_dir.iterdir()} - set(report_files()))
        if others:
            raise ReportError(
                f"{out_dir} holds other files than a report ({', '.join(others[:3])}); "
                "choose a new or empty --out"
            )
    with staged(out_dir, overwrite=True) as staging:
        plots = {name: staging / f"{name}.png" for name in PLOTS}
        _plot_kld_vs_bpw(results, plots["kld_vs_bpw"])
        _plot_ppl_vs_size(results, plots["ppl_vs_size"])
        _plot_kld_distribution(results, plots["kld_distribution"])
        files = {**plots, "csv": staging / "report.csv", "md": staging / "report.md"}
        _write_csv(results, files["csv"])
        context = _context(results)
        files["md"].write_text(_render("report.md.j2", context, plots=plots), encoding="utf-8")
        files["html"] = staging / "report.html"
        html = _render("report.html.j2", context, plots={k: _data_uri(p) for k, p in plots.items()})
        files["html"].write_text(html, encoding="utf-8")
    return {kind: out_dir / path.name for kind, path in files.items()}


def report_files() -> list[str]:
    """The names `write_report` writes."""
    return [f"{name}.png" for name in PLOTS] + ["report.csv", "report.md", "report.html"]


# --- does the importance matrix help? ---------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """How a quantity moved from the variant without an imatrix to the one with it.

    `noise` is sqrt(u_without² + u_with²): the two rows' uncertainties combined as if independent.
    Both rows score the same tokens, so their errors are positively correlated and the true noise
    of the difference is, if anything, smaller: "beyond the uncertainty" is the safe claim.
    """

    without: float
    with_: float
    noise: float

    @property
    def beyond_noise(self) -> bool:
        return abs(self.with_ - self.without) > self.noise

    @classmethod
    def of(cls, without: Estimate, with_: Estimate) -> Difference:
        return cls(without.value, with_.value, math.hypot(without.uncertainty, with_.uncertainty))


@dataclass(frozen=True)
class ImatrixComparison:
    """One variant measured both with and without an importance matrix."""

    format: str
    variant: str
    kld: Difference
    ppl: Difference  # from ΔPPL's paired uncertainties, which are far tighter than PPL's own

    @property
    def verdict(self) -> str:
        """ "helps", "hurts" or "no measurable effect", judged by KLD (what the imatrix targets)."""
        if not self.kld.beyond_noise:
            return "no measurable effect"
        return "helps" if self.kld.with_ < self.kld.without else "hurts"

    def sentence(self) -> str:
        """E.g. "Q2_K: the imatrix raised KLD 0.0446 → 0.0539 (beyond the uncertainty ±0.002)
        and PPL …; on this model it does not help at this level." """
        kld = _moved("KLD", self.kld, lambda v: _significant(v, 3))
        ppl = _moved("PPL", self.ppl, lambda v: _num(v, ".4g"))
        conclusion = {
            "helps": "on this model it helps at this level",
            "hurts": "on this model it does not help at this level",
            "no measurable effect": "on this model its effect at this level is within the noise",
        }[self.verdict]
        return f"{self.variant}: the imatrix {kld} and {ppl}; {conclusion}."


def _moved(what: str, d: Difference, show: Callable[[float], str]) -> str:
    verb = "lowered" if d.with_ < d.without else "raised" if d.with_ > d.without else "kept"
    where = "beyond" if d.beyond_noise else "within"
    noise = _significant(d.noise, 2) if d.noise > 0 else "0"
    return f"{verb} {what} {show(d.without)} → {show(d.with_)} ({where} the uncertainty ±{noise})"


def imatrix_comparisons(candidates: Sequence[Candidate]) -> list[ImatrixComparison]:
    """Every (format, variant) present both with and without an imatrix, in the given order."""
    pairs: dict[tuple[str, str], dict[bool, Candidate]] = {}
    for c in candidates:
        if c.model.imatrix is not None:
            pairs.setdefault((c.model.format, c.model.variant), {})[c.model.imatrix] = c
    comparisons = []
    for (fmt, variant), pair in pairs.items():
        if len(pair) == 2:
            without, with_ = pair[False], pair[True]
            ppl = Difference(
                without.ppl.value,
                with_.ppl.value,
                math.hypot(without.ppl_diff.uncertainty, with_.ppl_diff.uncertainty),
            )
            comparisons.append(
                ImatrixComparison(fmt, variant, Difference.of(without.kld, with_.kld), ppl)
            )
    return comparisons


# --- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    format: str
    rows: list[list[str]]


def _context(results: Results) -> dict[str, Any]:
    """What both templates show: header facts, the table's cells, the column explanations."""
    ref = results.reference
    text, tokens = results.text, results.tokens
    reference_row = [
        ref.format.upper(),
        f"{ref.variant} (reference)",
        "—",
        _gib(ref.size_bytes),
        _num(ref.bits_per_weight, ".2f"),
        _pm(results.reference_ppl, results.reference_ppl_uncertainty),
        "—", "—", "—", "—", "—",
    ]  # fmt: skip
    groups: list[Group] = []
    for c in results.sorted_candidates():
        if not groups or groups[-1].format != c.model.format:
            groups.append(Group(c.model.format, []))
        groups[-1].rows.append(_cells(c))
    versions: dict[str, list[str]] = {}
    for source in results.sources:  # a tool whose version differs between files lists each
        for tool, version in source.versions.items():
            versions.setdefault(tool, [])
            if str(version) not in versions[tool]:
                versions[tool].append(str(version))
    return {
        "title": f"Quantization quality: {ref.name}",
        "reference": f"{ref.name} ({ref.format} {ref.variant}, sha256 {_short(ref.sha256)})",
        "text": (
            f"{text.get('name', '?')} (sha256 {_short(text.get('sha256', ''))}, "
            f"{_int(text.get('characters'))} characters)"
        ),
        "n_ctx": results.n_ctx,
        "chunks": results.chunks,
        "tokens": (
            f"{_int(tokens.get('evaluated'))} evaluated, {_int(tokens.get('scored'))} scored "
            f"(the second half of each {results.n_ctx}-token window)"
        ),
        "cache": _cache_note(results),
        "versions": {tool: " / ".join(v) for tool, v in versions.items()},
        "sources": [(str(s.path), s.created_at) for s in results.sources],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "columns": COLUMNS,
        "reference_row": reference_row,
        "groups": groups,
        "explanations": EXPLANATIONS,
        "imatrix_notes": [c.sentence() for c in imatrix_comparisons(results.sorted_candidates())],
    }


def _cells(c: Candidate) -> list[str]:
    m = c.model
    return [
        m.format.upper(),
        m.variant,
        {True: "yes", False: "no", None: "—"}[m.imatrix],
        _gib(m.size_bytes),
        _num(m.bits_per_weight, ".2f"),
        _pm(c.ppl.value, c.ppl.uncertainty),
        _pm(c.ppl_diff.value, c.ppl_diff.uncertainty, signed=True),
        _significant(c.kld.value, 5),
        _num(100 * c.p_diff.value, "+.3f"),
        _num(100 * c.rms_p_diff.value, ".3f"),
        _num(100 * c.same_top.value, ".2f"),
    ]


def _cache_note(results: Results) -> str:
    """How the reference's logits were stored, and what the KLD error bound means."""
    cache = results.cache
    bounds = [c.kld_error_bound for c in results.candidates if c.kld_error_bound is not None]
    bound = (
        "Each KLD comes with a bound on the error the cached reference can introduce (CSV column "
        "kld_error_bound): the exact KLD is within it of the reported one"
    )
    bound += f"; the largest bound in this report is {max(bounds):.3g} nats." if bounds else "."
    if "logit_error_max" in cache:
        how = (
            "The reference's logits are cached as coordinates in the span of its output matrix; "
            f"rebuilt, each logit is within {_num(cache['logit_error_max'], '.3g')} of the "
            "original "
            f"(mean worst error per token {_num(cache.get('logit_error_mean'), '.3g')})."
        )
    else:
        how = "The results do not say how the reference's distribution was cached."
    return f"{how} {bound}"


def _write_csv(results: Results, path: Path) -> None:
    """Numbers at full precision, value and uncertainty in separate columns; percent for Δp."""
    ref = results.reference
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerow(
            {
                **_model_fields(ref),
                "role": "reference",
                "imatrix": "",
                "ppl": results.reference_ppl,
                "ppl_uncertainty": results.reference_ppl_uncertainty,
            }
        )
        for c in results.sorted_candidates():
            writer.writerow(
                {
                    **_model_fields(c.model),
                    "role": "candidate",
                    "ppl": c.ppl.value,
                    "ppl_uncertainty": c.ppl.uncertainty,
                    "ppl_diff": c.ppl_diff.value,
                    "ppl_diff_uncertainty": c.ppl_diff.uncertainty,
                    "kld": c.kld.value,
                    "kld_uncertainty": c.kld.uncertainty,
                    "kld_error_bound": c.kld_error_bound,
                    "mean_p_diff_pct": 100 * c.p_diff.value,
                    "mean_p_diff_pct_uncertainty": 100 * c.p_diff.uncertainty,
                    "rms_p_diff_pct": 100 * c.rms_p_diff.value,
                    "rms_p_diff_pct_uncertainty": 100 * c.rms_p_diff.uncertainty,
                    "same_top_pct": 100 * c.same_top.value,
                    "same_top_pct_uncertainty": 100 * c.same_top.uncertainty,
                    "tokens": c.count,
                }
            )


def _model_fields(m: Model) -> dict[str, Any]:
    return {
        "format": m.format,
        "quant": m.variant,
        "name": m.name,
        "imatrix": {True: "yes", False: "no", None: ""}[m.imatrix],
        "size_bytes": m.size_bytes,
        "size_gib": m.size_bytes / GIB,
        "bits_per_weight": m.bits_per_weight,
        "sha256": m.sha256,
    }


def _render(template: str, context: dict[str, Any], plots: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("eval_quant", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    # A pipe inside a Markdown cell would split it.
    env.filters["md"] = lambda s: str(s).replace("|", "\\|")
    plot_names = {
        name: path.name if isinstance(path, Path) else path for name, path in plots.items()
    }
    return env.get_template(template).render(**context, plots=plot_names)


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


# --- number formatting -------------------------------------------------------------------------


# One formatting for the report, the model cards and the release index (quantize.model_card).
_pm = plus_minus
_num = number
_significant = significant


def _gib(size_bytes: int) -> str:
    gib = size_bytes / GIB
    return f"{gib:.2f}" if gib >= 1 else f"{gib:.3g}"  # tiny test models: keep 3 digits


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _short(value: Any) -> str:
    return value[:12] if isinstance(value, str) else repr(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _estimate(data: dict[str, Any]) -> Estimate:
    return Estimate(float(data["value"]), float(data["uncertainty"]))


# --- plots -------------------------------------------------------------------------------------


def _series(results: Results) -> dict[str, list[Candidate]]:
    """Plot series: GGUF with and without imatrix apart, each other format one series."""
    series: dict[str, list[Candidate]] = {}
    for c in results.sorted_candidates():
        m = c.model
        name = m.format.upper()
        if m.imatrix is not None:
            name += " + imatrix" if m.imatrix else " (no imatrix)"
        series.setdefault(name, []).append(c)
    return series


MARKERS = "osD^vP*Xph<>"


def _figure(width: float, height: float) -> Any:
    # A bare Figure draws with Agg and never touches pyplot's global state or a display.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _scatter_plot(
    results: Results,
    out: Path,
    x: Callable[[Candidate], float | None],
    y: Callable[[Candidate], float],
    setup: Callable[[Any], None],
    yerr: Callable[[Candidate], float] | None = None,
) -> None:
    """One chart with a line and marker per series, each point labelled with its variant."""
    fig = _figure(10, 6.5)
    ax = fig.add_subplot()
    for i, (name, members) in enumerate(_series(results).items()):
        points = [(x(c), y(c), c) for c in members if x(c) is not None and y(c) > 0]
        if not points:
            continue
        points.sort(key=lambda p: p[0])
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        errors = [yerr(p[2]) for p in points] if yerr else None
        marker = MARKERS[i % len(MARKERS)]
        line, *_ = ax.errorbar(
            xs, ys, yerr=errors, marker=marker, label=name, linewidth=1, capsize=2
        )
        # Alternate series label above and below their points: GGUF with and without imatrix
        # share every bpw, and their labels would otherwise print over each other.
        above = i % 2 == 0
        for px, py, c in points:
            ax.annotate(
                c.model.variant,
                (px, py),
                xytext=(4, 3 if above else -3),
                textcoords="offset points",
                va="bottom" if above else "top",
                fontsize=7,
                color=line.get_color(),
            )
    setup(ax)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.savefig(out, format="png")


def _plot_kld_vs_bpw(results: Results, out: Path) -> None:
    def setup(ax: Any) -> None:
        ax.set_yscale("log")  # KLD spans orders of magnitude from Q8_0 to IQ1_S
        ax.set_xlabel("bits per weight")
        ax.set_ylabel("mean KLD (nats, log scale)")
        ax.set_title(f"KL divergence from {results.reference.name} against bits per weight")

    _scatter_plot(results, out, lambda c: c.model.bits_per_weight, lambda c: c.kld.value, setup)


def _plot_ppl_vs_size(results: Results, out: Path) -> None:
    ppls = [c.ppl.value for c in results.candidates if c.ppl.value > 0] + [results.reference_ppl]

    def setup(ax: Any) -> None:
        ax.axhline(results.reference_ppl, color="black", linestyle="--", linewidth=1)
        ax.annotate(
            f"reference {results.reference_ppl:.4g}",
            (0, results.reference_ppl),
            xycoords=("axes fraction", "data"),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=8,
        )
        if max(ppls) / min(ppls) > 3:  # a 1-bit quant's PPL would flatten the others
            ax.set_yscale("log")
        ax.set_xlabel("size [GiB]")
        ax.set_ylabel("perplexity")
        ax.set_title("Perplexity against size (dashed: the reference)")

    _scatter_plot(
        results,
        out,
        lambda c: c.model.size_bytes / GIB,
        lambda c: c.ppl.value,
        setup,
        yerr=lambda c: c.ppl.uncertainty,
    )


def _plot_kld_distribution(results: Results, out: Path) -> None:
    """Per-token KLD of each quant as a horizontal box from its quantiles, one row per quant.

    Box: quartiles; line: median; whiskers: 1st and 99th percentile; dot: maximum; triangle: mean.
    """
    rows = [c for c in results.sorted_candidates() if len(c.kld_quantiles) == 101]
    fig = _figure(8, 1.2 + 0.32 * max(len(rows), 1))
    ax = fig.add_subplot()
    positives = [q for c in rows for q in c.kld_quantiles[1:] if q > 0]
    floor = min(positives) if positives else 1e-6  # log scale: zero KLD drawn at the smallest seen
    stats = []
    for c in rows:
        q = [max(v, floor) for v in c.kld_quantiles]
        stats.append(
            {
                "label": c.model.label,
                "whislo": q[1],
                "q1": q[25],
                "med": q[50],
                "q3": q[75],
                "whishi": q[99],
                "fliers": [q[100]],
                "mean": max(c.kld.value, floor),
            }
        )
    if stats:
        ax.bxp(stats, orientation="horizontal", showmeans=True, widths=0.6)
        ax.invert_yaxis()  # the table's order, top to bottom
        ax.set_xscale("log")
        ax.tick_params(axis="y", labelsize=8)
    else:
        ax.text(0.5, 0.5, "no KLD quantiles in the results", ha="center", transform=ax.transAxes)
    ax.set_xlabel("per-token KLD (nats, log scale)")
    ax.set_title("Per-token KLD: quartiles, 1st-99th percentile, max (dot), mean (triangle)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.savefig(out, format="png")
