"""Documents per second of the data pipeline: clean, anonymize, features; 1 process against 2.

The input is our corpus's documents repeated to `--documents` records in one .jsonl file. Each
step runs as `bielik-quant data STEP` in a fresh process, whole (reading, shards, writing), first
with `--num-proc 1`, then with `--num-proc 2`, on the same input; the figure is documents over
wall seconds, and the speed-up is the ratio of the two in the same run.

    python3 benchmarks/data_pipeline.py --documents 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "data_pipeline.json"
STEPS = {
    "clean": [],
    "anonymize": [],
    "features": [],
    "features-no-morphology": ["--no-morphology"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=250)
    args = parser.parse_args()

    from calibration_data import load

    texts = load("pl-en").texts
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "docs.jsonl"
        with source.open("w", encoding="utf-8") as out:
            for i in range(args.documents):
                record = {"id": f"d{i}", "text": texts[i % len(texts)]}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        for name, extra in STEPS.items():
            step = name.split("-")[0]
            for procs in (1, 2):
                target = Path(work) / f"{name}-{procs}"
                command = [sys.executable, "-m", "bielik_quant", "data", step, str(source),
                           "--out", str(target), "--num-proc", str(procs),
                           "--shard-size", str(args.shard_size), *extra]  # fmt: skip
                started = time.monotonic()
                subprocess.run(command, check=True, capture_output=True, cwd=REPO)
                seconds = time.monotonic() - started
                rows.setdefault(name, {})[f"docs_per_s_{procs}proc"] = round(
                    args.documents / seconds, 1
                )
            rows[name]["speedup_2proc"] = round(
                rows[name]["docs_per_s_2proc"] / rows[name]["docs_per_s_1proc"], 2
            )
            print(name, rows[name], flush=True)
    result = {
        "command": "python3 benchmarks/data_pipeline.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "documents": args.documents,
        "mean_characters": round(sum(map(len, texts)) / len(texts)),
        "steps": rows,
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
