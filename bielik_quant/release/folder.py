"""The release folder: what a user uploads, one repository per format, as quantized-model users
know them (one folder per format, its variants inside, one index README for the whole release).

```
out/
  README.md                       the index: one row per file, measured numbers, "when to use it"
  release.json                    every file (sha256, size); each artifact's results row
  report/                         the Table 8 report (report.md, .csv, .html, plots), copied
  <name>-GGUF/<artifact>/         each artifact's files (hard links), its manifest, and its card
  <name>-AWQ/<artifact>/          regenerated with the measured quality row
```

Every number comes from the eval's results.json; an artifact it did not measure is refused, so
a release never ships an unmeasured variant. `out` is built in a hidden sibling and renamed into
place (quantize.artifact.staged): it is the whole old release or the whole new one, never half.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_quant import schema
from eval_quant.report import (
    Candidate,
    Difference,
    Results,
    imatrix_comparisons,
    load_results,
)
from quantize.artifact import (
    MANIFEST,
    MODEL_CARD,
    Artifact,
    link_or_copy,
    now,
    staged,
    write_json,
)
from quantize.model_card import (
    plus_minus,
    render_model_card,
    significant,
    source_license,
    usage_of,
)

SCHEMA = "bielik-quant.release/1"
RELEASE_JSON = "release.json"
INDEX = "README.md"
REPORT_DIR = "report"
NO_IMATRIX_SUFFIX = "-noimatrix"
UNQUANTIZED = ("F32", "F16", "BF16")  # GGUF variants that never take an imatrix
# Sizes within 1 % count as the same to the "when to use it" rule: the same quant with and without
# an imatrix differs by the bytes of the imatrix's metadata record, not by anything a user weighs.
SAME_SIZE = 0.01
INDEX_COLUMNS = (
    "File", "Quant", "imatrix", "Size", "bpw", "PPL", "KLD", "Same top p [%]", "When to use it",
)  # fmt: skip


class ReleaseFolderError(ValueError):
    """Inputs that cannot make an honest release: an unmeasured artifact, colliding names, …"""


@dataclass(frozen=True)
class Entry:
    """One artifact as it goes into the release."""

    source: Path  # the artifact directory as exported (never modified)
    manifest: dict[str, Any]
    candidate: Candidate  # its row in the results
    folder: str  # <name>-<FORMAT>
    directory: str  # the artifact's directory name in the release
    renamed: dict[str, str]  # original file name → its name in the release

    @property
    def relative(self) -> str:
        return f"{self.folder}/{self.directory}"

    @property
    def index_file(self) -> str:
        """What the index links: the model file of a one-file format (GGUF), else the folder."""
        model = self.manifest.get("files", {}).get("model")
        return f"{self.relative}/{model}" if model else f"{self.relative}/"


def assemble_release(
    artifacts: Sequence[Path],
    results: Path | Sequence[Path],
    report_dir: Path,
    out: Path,
    name: str,
    license_id: str | None = None,
) -> dict[str, Any]:
    """Write the release folder `out` from exported artifacts, the eval's results and its report.

    Returns what `out/release.json` records: every file written (path relative to `out`, sha256,
    size) and, per artifact, where it came from and the results row (candidate sha256) its
    numbers are from. Raises ReleaseFolderError (or the QuantizeError of an unreadable
    artifact) before anything is written.
    """
    out = Path(os.path.abspath(out))
    paths = [Path(results)] if isinstance(results, (str, Path)) else [Path(p) for p in results]
    measured = load_results(paths)
    report_dir = Path(report_dir)
    # report.csv is how the report is checked against the results (below); a report written
    # without its Markdown or HTML (`report.formats`) ships without them.
    if not (report_dir / "report.csv").is_file():
        raise ReleaseFolderError(f"{report_dir} is not a report folder (no report.csv)")
    # `out` is replaced whole, so it may only be empty or an earlier release.
    if out.exists() and not (out.is_dir() and (_empty(out) or (out / RELEASE_JSON).is_file())):
        raise ReleaseFolderError(f"{out} exists and is not a release folder; choose a new --out")
    entries = _entries(artifacts, measured, name)
    _check_report(report_dir, entries)

    with staged(out, overwrite=True) as staging:
        for entry in entries:
            _write_artifact(entry, staging / entry.relative, measured, license_id)
        shutil.copytree(report_dir, staging / REPORT_DIR)
        index = render_index(entries, measured, name, license_id)
        (staging / INDEX).write_text(index, encoding="utf-8")
        record = {
            "schema": SCHEMA,
            "name": name,
            "created_at": now(),
            "results": [str(p.resolve()) for p in paths],
            "report": str(report_dir.resolve()),
            "artifacts": [
                {
                    "path": entry.relative,
                    "source": str(entry.source),
                    "format": entry.manifest["format"],
                    "variant": entry.manifest["variant"],
                    "imatrix": entry.candidate.model.imatrix,
                    "renamed": entry.renamed,
                    "results_row": {
                        "sha256": entry.candidate.model.sha256,
                        "name": entry.candidate.model.name,
                    },
                }
                for entry in entries
            ],
            "files": _file_list(staging),
        }
        write_json(staging / RELEASE_JSON, record)
    return record


# --- which artifact is which row, and where it goes --------------------------------------------


def _entries(artifacts: Sequence[Path], measured: Results, name: str) -> list[Entry]:
    """Each artifact with its results row and its place in the release; refusals come here."""
    from eval_quant.models import describe

    rows = {c.model.sha256: c for c in measured.candidates}
    paths = _row_paths(measured)
    entries: list[Entry] = []
    resolved = [Path(p).resolve() for p in artifacts]
    if not resolved:
        raise ReleaseFolderError("no artifacts to release")
    twice = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if twice:
        raise ReleaseFolderError(f"{twice[0]} is given twice")
    for path in resolved:
        manifest = Artifact.open(path).manifest
        # The weights' content hash, as eval recorded it: a path that was re-exported after the
        # eval ran has another hash, and its old numbers must not be shipped with it.
        sha256 = describe(path).sha256
        candidate = rows.get(sha256)
        if candidate is None:
            why = (
                "changed since the eval measured it (its content hash differs); run eval again"
                if str(path) in paths
                else "has no row in the results; evaluate it before releasing it"
            )
            raise ReleaseFolderError(f"{path} {why}")
        same = next((e for e in entries if e.candidate is candidate), None)
        if same is not None:
            raise ReleaseFolderError(f"{path} and {same.source} hold the same weights; give one")
        folder = f"{name}-{manifest['format'].upper()}"
        entries.append(Entry(path, manifest, candidate, folder, path.name, {}))
    return _separate(entries)


def _row_paths(measured: Results) -> set[str]:
    """The candidate paths the results files recorded (only for a clearer refusal)."""
    found = set()
    for source in measured.sources:
        data: schema.Results = json.loads(source.path.read_text("utf-8"))
        found.update(str(row.get("path")) for row in data["candidates"])
    return found


def _separate(entries: list[Entry]) -> list[Entry]:
    """Give a GGUF variant exported without an imatrix, beside the same variant with one, its
    own directory and file name (`-noimatrix`); any other collision is refused.

    Exports of one variant with and without an imatrix come from two export roots under the same
    name; in one release folder they would overwrite each other.
    """
    by_place: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        by_place.setdefault((entry.folder, entry.directory), []).append(entry)
    result = []
    for (folder, directory), group in by_place.items():
        plain = [e for e in group if e.candidate.model.imatrix is False]
        if len(group) == 2 and len(plain) == 1 and plain[0].manifest["variant"] not in UNQUANTIZED:
            renamed = _without_imatrix_name(plain[0])
            group = [renamed if e is plain[0] else e for e in group]
        elif len(group) > 1:
            sources = ", ".join(str(e.source) for e in group)
            raise ReleaseFolderError(
                f"{sources} would all be released as {folder}/{directory}; release only one"
            )
        result.extend(group)
    taken = [e.relative for e in result]
    clash = sorted({t for t in taken if taken.count(t) > 1})
    if clash:
        raise ReleaseFolderError(f"two artifacts would be released as {clash[0]}")
    position = {e.source: i for i, e in enumerate(entries)}
    return sorted(result, key=lambda e: position[e.source])


def _empty(folder: Path) -> bool:
    return next(folder.iterdir(), None) is None


def _check_report(report_dir: Path, entries: Sequence[Entry]) -> None:
    """The report beside the index must show the same measurements: every released file's row."""
    with (report_dir / "report.csv").open(encoding="utf-8", newline="") as f:
        shown = {row["sha256"] for row in csv.DictReader(f)}
    absent = [e.source for e in entries if e.candidate.model.sha256 not in shown]
    if absent:
        raise ReleaseFolderError(
            f"{report_dir} was written from other results: it has no row for {absent[0]}; "
            "write the report from the same results.json"
        )


def _without_imatrix_name(entry: Entry) -> Entry:
    directory = entry.directory + NO_IMATRIX_SUFFIX
    files = dict(entry.manifest["files"])
    renamed = {}
    model = files.get("model")
    if model and Path(model).stem == entry.directory:
        renamed[model] = directory + Path(model).suffix
        files["model"] = renamed[model]
    manifest = {**entry.manifest, "files": files}
    return Entry(entry.source, manifest, entry.candidate, entry.folder, directory, renamed)


# --- writing ------------------------------------------------------------------------------------


def _write_artifact(entry: Entry, target: Path, measured: Results, license_id: str | None) -> None:
    """The artifact's files (hard links where possible), its manifest and its measured card."""
    target.mkdir(parents=True)
    for file in sorted(entry.source.rglob("*")):
        relative = file.relative_to(entry.source)
        if not file.is_file() or str(relative) in (MANIFEST, MODEL_CARD):
            continue
        destination = target / entry.renamed.get(str(relative), str(relative))
        destination.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(file, destination)
    write_json(target / MANIFEST, entry.manifest)
    old_card = entry.source / MODEL_CARD
    usage = usage_of(old_card.read_text("utf-8")) if old_card.is_file() else None
    for old, new in entry.renamed.items():
        usage = usage.replace(old, new) if usage else usage
    if usage is None:
        usage = f"# see {MANIFEST} for the files and how they were made"
    license_id = license_id or source_license(Path(entry.manifest["source"]["path"]))
    card = render_model_card(
        entry.manifest, usage, license_id, quality_row(entry.candidate, measured)
    )
    (target / MODEL_CARD).write_text(card, encoding="utf-8")


def _file_list(root: Path) -> list[dict[str, Any]]:
    files = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        files.append(
            {
                "path": file.relative_to(root).as_posix(),
                "sha256": digest.hexdigest(),
                "size_bytes": file.stat().st_size,
            }
        )
    return files


def quality_row(c: Candidate, measured: Results) -> dict[str, Any]:
    """The card's `quality` dict (quantize.model_card.quality_section) from a results row."""
    ref = measured.reference
    return {
        "ppl": c.ppl.value,
        "ppl_uncertainty": c.ppl.uncertainty,
        "reference_ppl": measured.reference_ppl,
        "reference_ppl_uncertainty": c.ppl_base.uncertainty,
        "ppl_diff": c.ppl_diff.value,
        "ppl_diff_uncertainty": c.ppl_diff.uncertainty,
        "kld": c.kld.value,
        "kld_uncertainty": c.kld.uncertainty,
        "mean_p_diff": c.p_diff.value,
        "rms_p_diff": c.rms_p_diff.value,
        "same_top": c.same_top.value,
        "same_top_uncertainty": c.same_top.uncertainty,
        "reference": f"{ref.name} ({ref.format} {ref.variant})",
        "text": str(measured.text.get("name", "?")),
        "n_ctx": measured.n_ctx,
        "chunks": measured.chunks,
        "scored_tokens": int(measured.tokens.get("scored", c.count)),
    }


# --- the index ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """What the "when to use it" rule knows of one file: its size and how close it stayed."""

    label: str  # how the index names it, e.g. "Q4_K_M" or "Q2_K (no imatrix)"
    format: str
    variant: str
    imatrix: bool | None
    size_bytes: int
    kld: float
    kld_uncertainty: float
    same_top: float  # fraction of tokens whose top token is the reference's


def when_to_use(
    rows: Sequence[Measured], reference_size: int, reference: str = "FP16"
) -> list[str]:
    """One line per row saying when to pick it, derived from the measurements alone.

    Within a format (a user picks the runtime first, then the file):
    - A row is *dominated* when another is smaller and has a lower KLD, or is as large (sizes
      within SAME_SIZE count as equal) and has a KLD lower by more than the two rows' combined
      uncertainty: "skip: B is smaller (or: as large) and closer to FP16", naming the smallest
      such B (ties: the lower KLD). Two files of one size whose KLDs differ within the noise are
      not told apart by a skip; the one measured further says it is as close within it.
    - The others form the size/KLD front: the one with the lowest KLD is "the closest to FP16",
      the smallest "the smallest that keeps FP16's top token X% of the time", each with its
      same-top-p, KLD and size as a share of the reference's; a format with one file on the front
      says it is the only one.
    - A variant present with and without an imatrix gets, on both rows, which one measured the
      lower KLD and whether the difference exceeds the combined uncertainty sqrt(u₁² + u₂²).
    """
    lines = []
    for row in rows:
        peers = [r for r in rows if r.format == row.format and r is not row]
        better = [r for r in peers if _dominates(r, row)]
        if better:
            best = min(better, key=lambda r: (r.size_bytes, r.kld))
            size = "smaller" if _smaller(best, row) else "as large"
            noise = math.hypot(best.kld_uncertainty, row.kld_uncertainty)
            within = ", a difference within the uncertainty" if row.kld - best.kld <= noise else ""
            line = (
                f"skip: {best.label} is {size} and closer to {reference} "
                f"(KLD {significant(best.kld, 3)} vs {significant(row.kld, 3)}{within})"
            )
        else:
            front = [r for r in [row, *peers] if not _dominated(r, rows)]
            closest = min(front, key=lambda r: (r.kld, r.size_bytes))
            smallest = min(front, key=lambda r: (r.size_bytes, r.kld))
            facts = (
                f"keeps {reference}'s top token {_percent(row.same_top)} of the time "
                f"(KLD {significant(row.kld, 3)}) at {_share(row.size_bytes, reference_size)} "
                "of its size"
            )
            if len(front) == 1:
                line = f"the only {row.format.upper()} file worth having here: {facts}"
            elif row is closest:
                line = f"the closest to {reference}: {facts}"
            elif row is smallest:
                line = f"the smallest that {facts}"
            else:
                line = facts
            level = [r for r in peers if _no_larger(r, row) and r.kld < row.kld]
            if level and not any(r.imatrix is not None for r in (row, *level)):
                line += f"; as close as {level[0].label} within the uncertainty"
        lines.append(line + _imatrix_note(row, rows))
    return lines


def _no_larger(a: Measured, b: Measured) -> bool:
    return a.size_bytes <= b.size_bytes * (1 + SAME_SIZE)


def _smaller(a: Measured, b: Measured) -> bool:
    return a.size_bytes < b.size_bytes / (1 + SAME_SIZE)


def _dominates(a: Measured, b: Measured) -> bool:
    """`a` is the better pick than `b`: smaller and closer, or as large and measurably closer."""
    if a.format != b.format or not _no_larger(a, b) or not a.kld < b.kld:
        return False
    return _smaller(a, b) or b.kld - a.kld > math.hypot(a.kld_uncertainty, b.kld_uncertainty)


def _dominated(row: Measured, rows: Sequence[Measured]) -> bool:
    return any(r is not row and _dominates(r, row) for r in rows)


def _imatrix_note(row: Measured, rows: Sequence[Measured]) -> str:
    if row.imatrix is None:
        return ""
    twin = next(
        (
            r
            for r in rows
            if r.format == row.format
            and r.variant == row.variant
            and r.imatrix is not row.imatrix
            and r.imatrix is not None
        ),
        None,
    )
    if twin is None:
        return ""
    with_, without = (row, twin) if row.imatrix else (twin, row)
    d = Difference(
        without.kld, with_.kld, math.hypot(with_.kld_uncertainty, without.kld_uncertainty)
    )
    if with_.kld == without.kld:
        return "; with and without the imatrix measured the same KLD"
    winner = "with" if with_.kld < without.kld else "without"
    where = "beyond" if d.beyond_noise else "within"
    return (
        f"; {winner} the imatrix measured closer (KLD {significant(with_.kld, 3)} with, "
        f"{significant(without.kld, 3)} without, {where} the uncertainty "
        f"±{significant(d.noise, 2)})"
    )


def render_index(
    entries: Sequence[Entry], measured: Results, name: str, license_id: str | None
) -> str:
    """The release's README.md: front matter, what was measured how, one row per file."""
    ref = measured.reference
    reference = "FP16" if ref.bits_per_weight and 15 < ref.bits_per_weight < 17 else ref.name
    order = {id(c): i for i, c in enumerate(measured.sorted_candidates())}
    entries = sorted(entries, key=lambda e: order[id(e.candidate)])
    rows = [_measured(e) for e in entries]
    advice = when_to_use(rows, ref.size_bytes, reference)

    bases = sorted({e.manifest["source"]["name"] for e in entries})
    formats = list(dict.fromkeys(e.manifest["format"] for e in entries))
    front = ["---"]
    front += (
        [f"base_model: {bases[0]}"]
        if len(bases) == 1
        else ["base_model:"] + [f"- {b}" for b in bases]
    )
    front += ["base_model_relation: quantized", "language:", "- pl", "- en", "tags:"]
    front += [f"- {t}" for t in ("bielik-quant", "quantized", "polish", *formats)]
    front += ["quantized_by: bielik-quant"] + ([f"license: {license_id}"] if license_id else [])
    front.append("---")

    text, tokens = measured.text, measured.tokens
    reference_ppl = plus_minus(measured.reference_ppl, measured.reference_ppl_uncertainty)
    table = [
        "| " + " | ".join(INDEX_COLUMNS) + " |",
        "|" + " --- |" * len(INDEX_COLUMNS),
    ]
    for entry, line in zip(entries, advice, strict=True):
        c, m = entry.candidate, entry.candidate.model
        cells = [
            f"[{entry.index_file}]({entry.index_file})",
            f"{m.format.upper()} {m.variant}",
            {True: "yes", False: "no", None: "—"}[m.imatrix],
            _size(m.size_bytes),
            "—" if m.bits_per_weight is None else f"{m.bits_per_weight:.2f}",
            plus_minus(c.ppl.value, c.ppl.uncertainty),
            plus_minus(c.kld.value, c.kld.uncertainty),
            plus_minus(100 * c.same_top.value, 100 * c.same_top.uncertainty),
            line,
        ]
        table.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    notes = [c.sentence() for c in imatrix_comparisons([e.candidate for e in entries])]
    body = [
        f"# {name}",
        "",
        f"{', '.join(bases)} quantized by bielik-quant into {len(entries)} files in "
        f"{len(formats)} format{'s' if len(formats) > 1 else ''} "
        f"({', '.join(f.upper() for f in formats)}), one folder per format. Every number below "
        f"was measured by `bielik-quant eval` against {ref.name} ({ref.format} {ref.variant}, "
        f"sha256 {ref.sha256[:12]}) on {text.get('name', '?')} (sha256 "
        f"{str(text.get('sha256', ''))[:12]}): {measured.chunks:,} windows of n_ctx "
        f"{measured.n_ctx:,}, {int(tokens.get('scored', 0)):,} scored tokens; there the "
        f"reference's PPL is {reference_ppl}.",
        "",
        f"KLD is the mean KL({reference} ‖ file) per token in nats, same top p how often the file "
        f"ranks {reference}'s most probable token first; sizes are the weight files'. \"When to "
        'use it" follows from these numbers: within a format (pick the runtime first), a file '
        "another one beats on both size and KLD is marked skip. Each variant's folder has its "
        "model card with its full row; the whole comparison (ΔPPL, Δp, plots) is in "
        f"[{REPORT_DIR}/report.md]({REPORT_DIR}/report.md).",
        "",
        *table,
        "",
    ]
    if notes:
        body += ["**Does the importance matrix help?**", "", *[f"- {n}" for n in notes], ""]
    return "\n".join([*front, "", *body])


def _measured(entry: Entry) -> Measured:
    c, m = entry.candidate, entry.candidate.model
    label = m.variant + {True: " (imatrix)", False: " (no imatrix)", None: ""}[m.imatrix]
    return Measured(
        label, m.format, m.variant, m.imatrix, m.size_bytes, c.kld.value, c.kld.uncertainty,
        c.same_top.value,
    )  # fmt: skip


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%" if fraction >= 0.99 else f"{100 * fraction:.1f}%"


def _share(size: int, reference_size: int) -> str:
    return f"{100 * size / reference_size:.0f}%" if reference_size else "?"


def _size(size_bytes: int) -> str:
    return (
        f"{size_bytes / 2**30:.2f} GiB" if size_bytes >= 2**30 else f"{size_bytes / 2**20:.2f} MiB"
    )
