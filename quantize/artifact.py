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
from collections.abc import Iterator, Mapping
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
    if final.exists():
        # Move the old artifact aside first, so `final` is never a mix of old and new files.
        trash = final.with_name(f".{final.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        final.rename(trash)
        staging.rename(final)
        shutil.rmtree(trash)
    else:
        staging.rename(final)


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", "utf-8")
    os.replace(temporary, path)


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
