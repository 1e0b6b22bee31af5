"""The artifact's README.md: Hugging Face front matter, what a user needs to run it, and, once the
suite has measured it, its quality against the FP16 model.

The number formatting lives here (not in eval_quant, which imports quantize) so the card, the
report and the release index print a value and its uncertainty the same way.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

# The measured row a card shows: the columns of the paper's Table 8 that describe one artifact.
QUALITY_COLUMNS = ("PPL", "ΔPPL", "KLD", "Mean Δp [%]", "RMS Δp [%]", "Same top p [%]")


def source_license(model_dir: Path) -> str | None:
    """The `license:` of the source model's own card, if it has one."""
    card = model_dir / "README.md"
    if not card.is_file():
        return None
    match = re.search(r"^license:\s*(\S+)\s*$", card.read_text("utf-8", "replace"), re.M)
    return match[1] if match else None


def render_model_card(
    manifest: dict[str, Any],
    usage: str,
    license_id: str | None,
    quality: dict[str, Any] | None = None,
) -> str:
    """The card's Markdown. `quality` is this artifact's measured row (see `quality_section`);
    without it the card says where the numbers will come from."""
    source = manifest["source"]
    tags = ["bielik-quant", manifest["format"], manifest["variant"], "polish", "quantized"]
    front = ["---", f"base_model: {source['name']}", "language:", "- pl", "- en", "tags:"]
    front += [f"- {tag}" for tag in tags]
    front += ["quantized_by: bielik-quant"] + ([f"license: {license_id}"] if license_id else [])
    front.append("---")

    rows = [
        ("Format", manifest["format"].upper()),
        ("Variant", manifest["variant"]),
        ("Size", f"{manifest['size_bytes'] / 2**20:,.1f} MiB"),
        ("Bits per weight", f"{manifest['bits_per_weight']:.3f}"),
        ("Source", f"{source['name']} (sha256 {source['sha256'][:12]}…)"),
    ]
    calibration = manifest.get("calibration")
    if calibration:
        rows.append(
            ("Calibration", f"{calibration['name']} (sha256 {calibration['sha256'][:12]}…)")
        )
    if "imatrix" in manifest:  # formats that take one (GGUF)
        imatrix = manifest["imatrix"]
        rows.append(
            ("Importance matrix", f"{imatrix['chunk_count']} windows of {imatrix['chunk_size']} "
             "tokens" if imatrix else "none")
        )  # fmt: skip
    table = ["| | |", "| --- | --- |"] + [f"| {key} | {value} |" for key, value in rows]

    body = [
        f"# {source['name']} — {manifest['format'].upper()} {manifest['variant']}",
        "",
        f"{source['name']} quantized to {manifest['variant']} by bielik-quant. "
        "`bielik-quant.json` next to this card records the exact inputs, hashes and library "
        "versions.",
        "",
        *table,
        "",
        *(
            quality_section(quality)
            if quality
            else [
                "Quality against the FP16 model (PPL, KLD, Δp) appears in this card when "
                "`bielik-quant release` has measured it (`bielik-quant eval` measures it alone).",
            ]
        ),
        "",
        "## Usage",
        "",
        "```bash",
        usage,
        "```",
        "",
    ]
    return "\n".join([*front, "", *body])


def quality_section(q: dict[str, Any]) -> list[str]:
    """ "Quality against the FP16 model": one Table 8 row and how it was measured.

    `q` is a plain dict (quantize does not read eval results itself): ppl, ppl_uncertainty,
    reference_ppl, reference_ppl_uncertainty, ppl_diff, ppl_diff_uncertainty, kld,
    kld_uncertainty, mean_p_diff, rms_p_diff, same_top (fractions, as results.json has them),
    same_top_uncertainty, and what they were measured on: reference (its name), text (its name),
    n_ctx, chunks, scored_tokens.
    """
    cells = [
        plus_minus(q["ppl"], q.get("ppl_uncertainty")),
        plus_minus(q["ppl_diff"], q.get("ppl_diff_uncertainty"), signed=True),
        plus_minus(q["kld"], q.get("kld_uncertainty")),
        number(100 * q["mean_p_diff"], "+.3f"),
        number(100 * q["rms_p_diff"], ".3f"),
        plus_minus(100 * q["same_top"], 100 * q.get("same_top_uncertainty", 0.0)),
    ]
    return [
        "## Quality against the FP16 model",
        "",
        "| " + " | ".join(QUALITY_COLUMNS) + " |",
        "|" + " --- |" * len(QUALITY_COLUMNS),
        "| " + " | ".join(cells) + " |",
        "",
        f"Measured by `bielik-quant eval` on {q['text']}: {q['chunks']:,} windows of n_ctx "
        f"{q['n_ctx']:,}, {q['scored_tokens']:,} scored tokens (the second half of each window, as "
        "`llama-perplexity --kl-divergence` scores them), against the FP16 model "
        f"{q['reference']}, whose PPL on the same tokens is "
        f"{plus_minus(q['reference_ppl'], q.get('reference_ppl_uncertainty'))}. "
        "KLD is the mean KL(FP16 ‖ this model) "
        "per token in nats; Δp is the change in the probability of the correct next token; same "
        "top p is how often both models rank the same token first.",
    ]


def usage_of(card: str) -> str | None:
    """The usage command of a card `render_model_card` wrote (None if it has no Usage block)."""
    match = re.search(r"^## Usage\n\n```bash\n(.*?)\n```", card, re.M | re.S)
    return match[1] if match else None


def plus_minus(value: float, uncertainty: float | None, signed: bool = False) -> str:
    """value ± uncertainty, the uncertainty to two significant digits and the value to match."""
    if not math.isfinite(value):
        return "—"
    sign = "+" if signed else ""
    if uncertainty is None or not math.isfinite(uncertainty) or uncertainty <= 0:
        return f"{value:{sign}.4f}"  # too few tokens for an uncertainty (llama.cpp: count <= 10)
    decimals = min(12, max(0, 1 - math.floor(math.log10(uncertainty))))
    return f"{value:{sign}.{decimals}f} ± {uncertainty:.{decimals}f}"


def number(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def significant(value: float, digits: int) -> str:
    """`digits` significant digits in fixed notation: 0.000046359, never 4.6359e-05 in a table."""
    if not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"
