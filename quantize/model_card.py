"""The artifact's README.md: Hugging Face front matter and what a user needs to run it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def source_license(model_dir: Path) -> str | None:
    """The `license:` of the source model's own card, if it has one."""
    card = model_dir / "README.md"
    if not card.is_file():
        return None
    match = re.search(r"^license:\s*(\S+)\s*$", card.read_text("utf-8", "replace"), re.M)
    return match[1] if match else None


def render_model_card(manifest: dict[str, Any], usage: str, license_id: str | None) -> str:
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
        "Quality against the FP16 model (PPL, KLD, Δp) appears here once `bielik-quant eval` "
        "has run on this artifact.",
        "",
        "## Usage",
        "",
        "```bash",
        usage,
        "```",
        "",
    ]
    return "\n".join([*front, "", *body])
