"""Artifact directories: `<out>/<model>-<FORMAT>-<variant>/`, written whole or not at all.

An exporter fills a hidden staging directory next to the final one (`.<name>.partial`) and renames
it into place only when every file, the manifest last, is written. A killed export leaves only the
hidden staging directory, which the next run of the same export removes before starting clean.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from quantize.errors import OutputExistsError, QuantizeError

MANIFEST = "bielik-quant.json"
MODEL_CARD = "README.md"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> Artifact:
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise QuantizeError(f"{path} is not a bielik-quant artifact (no {MANIFEST})")
        return cls(path, json.loads(manifest_file.read_text("utf-8")))


def artifact_name(model: str, format_name: str, variant: str) -> str:
    return f"{model}-{format_name.upper()}-{variant}"


def check_writable(final: Path, overwrite: bool) -> None:
    """Refuse early (before hours of work) if the artifact exists and may not be replaced."""
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final} already exists; pass --overwrite to replace it")


def plan_outputs(request: Any, format_name: str, variants: Sequence[str]) -> dict[str, Path]:
    """variant → its artifact directory, each checked writable before any work starts.

    `request` is a quantize.registry.ExportRequest (not imported: the registry imports this).
    """
    finals = {
        variant: request.out_root / artifact_name(request.source.name, format_name, variant)
        for variant in variants
    }
    for final in finals.values():
        check_writable(final, request.overwrite)
    return finals


def publish(staging: Path, manifest: dict[str, Any], usage: str) -> None:
    """Finish a staged artifact: the model card, then the manifest, whose presence means done."""
    from quantize.model_card import render_model_card, source_license

    license_id = source_license(Path(manifest["source"]["path"]))
    card = render_model_card(manifest, usage, license_id)
    (staging / MODEL_CARD).write_text(card, "utf-8")
    write_json(staging / MANIFEST, manifest)


@contextmanager
def staged(final: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging directory; on success it becomes `final`, on failure it is removed."""
    check_writable(final, overwrite)
    staging = final.with_name(f".{final.name}.partial")
    if staging.exists():  # left behind by an export that was killed
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    trash = final.with_name(f".{final.name}.old")
    shutil.rmtree(trash, ignore_errors=True)  # also what a run killed while swapping left
    if final.exists():
        # Move the old artifact aside first, so `final` is never a mix of old and new files.
        final.rename(trash)
    staging.rename(final)
    shutil.rmtree(trash, ignore_errors=True)


def link_or_copy(source: Path, destination: Path) -> None:
    """`destination` as a hard link to `source`: no space and no time for gigabytes of weights;
    across filesystems (or where links are not allowed) a copy. Sharing the inode is safe because
    artifacts and checkpoints are replaced whole, never edited in place."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a hidden temporary sibling, then os.replace.

    An interrupted write leaves the old file as it was and removes its temporary file.
    """
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_text(text, "utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the distributions an artifact was made with (absent ones skipped)."""
    versions = {"python": platform.python_version()}
    for name in ("bielik-quant", *names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def command_line() -> str:
    """The command as the user typed it (`python -m bielik_quant` shows as `bielik-quant`)."""
    program = Path(sys.argv[0]).name
    if program in ("__main__.py", "cli.py"):
        program = "bielik-quant"
    return shlex.join([program, *sys.argv[1:]])


def base_manifest(
    request: Any,  # quantize.registry.ExportRequest (not imported: registry imports this module)
    format_name: str,
    variant: str,
    files: Mapping[str, str | None],
    size_bytes: int,
    n_weights: int,
    n_bytes: int,
    libraries: Sequence[str],
    started_at: str,
    calibration: Any = None,  # calibration_data.Calibration when the export used one
) -> dict[str, Any]:
    """The manifest fields every format writes; a format adds its own settings to the result.

    `n_bytes / n_weights` are the bytes and the number of weights of the model's tensors as stored,
    so `bits_per_weight` is what the weights really cost, quantization metadata included.
    """
    source = request.source
    return {
        "manifest_version": MANIFEST_VERSION,
        "format": format_name,
        "variant": variant,
        "files": dict(files),
        "bits_per_weight": round(8 * n_bytes / n_weights, 4),
        "size_bytes": size_bytes,
        "n_parameters": n_weights,
        "source": {
            "name": source.name,
            "path": str(source.path.resolve()),
            "architecture": source.architecture,
            "sha256": source.sha256,
        },
        "calibration": None
        if calibration is None
        else {
            "name": calibration.name,
            "sha256": calibration.sha256,
            "documents": len(calibration.documents),
        },
        "versions": library_versions(*libraries),
        "command": command_line(),
        "started_at": started_at,
        "created_at": now(),
    }
