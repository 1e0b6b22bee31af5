"""Stage stamps: what a stage read and with which settings, so a second run knows it is done.

Each stage directory holds, while the stage runs, `.attempt.json` with the stage's key, and when it
has finished, `stage.json` (written last, atomically) with the key and a hash of what it produced.
The key is a hash of the stage's settings and the content hashes of its inputs, among them the
output hash of the stage before it, so a change anywhere upstream reaches every later stage.

On the next run a stage is
- skipped when `stage.json` holds the same key (and its output is still there, unchanged);
- resumed when `.attempt.json` holds the same key: the same work was killed part-way, and the
  stage goes on from what it finished (a training checkpoint, complete artifacts, measured rows);
- otherwise started afresh in an emptied directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantize.artifact import now, write_json
from quantize.source import sha256_files, sha256_tree

STAMP = "stage.json"
ATTEMPT = ".attempt.json"


def digest(value: Any) -> str:
    """A stable hash of JSON-able settings and input hashes."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def output_sha256(path: Path) -> str:
    """The content hash of a stage's product: a file, or every file under a directory."""
    if path.is_file():
        return sha256_files([path])
    return sha256_tree(path, skip=lambda relative: relative.name in (STAMP, ATTEMPT))


@dataclass(frozen=True)
class StageDir:
    path: Path

    def finished(self, key: str, output: Path) -> str | None:
        """The output's hash if the stage finished with this key and its output is still what
        the stamp says it produced; None when it must run."""
        stamp = _read(self.path / STAMP)
        if stamp is None or stamp.get("key") != key or not output.exists():
            return None
        sha = output_sha256(output)
        return sha if stamp.get("output_sha256") == sha else None

    def begin(self, key: str, fresh: bool) -> bool:
        """Prepare to run; returns whether the stage resumes work killed part-way."""
        attempt = _read(self.path / ATTEMPT)
        resume = not fresh and attempt is not None and attempt.get("key") == key
        if not resume:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(parents=True)
            write_json(self.path / ATTEMPT, {"key": key, "started_at": now()})
        else:
            (self.path / STAMP).unlink(missing_ok=True)
        return resume

    def finish(self, key: str, output: Path, record: dict[str, Any]) -> str:
        """Write the stamp (last), and return the output's hash for the next stage's key."""
        sha = output_sha256(output)
        write_json(self.path / STAMP, {
            **record, "key": key, "output": str(output.relative_to(self.path)),
            "output_sha256": sha, "finished_at": now(),
        })  # fmt: skip
        (self.path / ATTEMPT).unlink(missing_ok=True)
        return sha


def _read(file: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None
