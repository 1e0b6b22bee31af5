"""Documents per second of the data pipeline: clean, anonymize, features; 1 process against 2.

The input is our corpus's documents repeated to `--documents` records in one .jsonl file. Each
step runs as `bielik-quant data STEP` in a fresh process, whole (reading, shards, writing), first
with `--num-proc 1`, then with `--num-proc 2`, on the same input; the figure is documents over
wall seconds, and the speed-up is the ratio of the two in the same run.

    python3 benchmarks/data_pipeline.py --documents 2000

`--memory` measures instead the peak resident memory of one `data anonymize` run with two
processes (GNU time's "Maximum resident set size", `/usr/bin/time -v`), on documents of about
`--characters` characters each, with this working tree's code or, given `--revision`, that
commit's (extracted with `git archive`), so two versions are measured on the same input:

    python3 benchmarks/data_pipeline.py --memory --documents 20000 --characters 10000
    python3 benchmarks/data_pipeline.py --memory --documents 20000 --revision f3c1b8c
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "data_pipeline.json"
MEMORY_RESULT = REPO / "benchmarks" / "results" / "data_pipeline_memory.json"
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
    parser.add_argument("--memory", action="store_true", help="Peak RSS, not throughput.")
    parser.add_argument("--characters", type=int, default=10000)
    parser.add_argument("--revision", help="Measure this commit's code (default: the tree).")
    args = parser.parse_args()
    if args.memory:
        return memory(args)

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


def memory(args: argparse.Namespace) -> None:
    """Peak RSS of `data anonymize --num-proc 2`: the corpus held in memory shows up here."""
    from calibration_data import load

    corpus = load("pl-en").texts
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "docs.jsonl"
        with source.open("w", encoding="utf-8") as out:
            for i in range(args.documents):
                text, j = "", i
                while len(text) < args.characters:  # whole corpus documents, rotated per record
                    text += corpus[j % len(corpus)] + "\n\n"
                    j += 1
                out.write(json.dumps({"id": f"d{i}", "text": text}, ensure_ascii=False) + "\n")
        code = REPO
        if args.revision:  # `python -m` imports from its working directory first
            code = Path(work) / "code"
            code.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.revision],
                                     capture_output=True, check=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "bielik_quant", "data",
                   "anonymize", str(source), "--out", str(Path(work) / "out"), "--num-proc", "2",
                   "--shard-size", str(args.shard_size)]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, cwd=code)
        seconds = time.monotonic() - started
        if done.returncode:
            sys.exit(done.stderr[-2000:])
        peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
        input_mib = source.stat().st_size / 2**20
    row = {
        "command": "python3 benchmarks/data_pipeline.py " + " ".join(sys.argv[1:]),
        "code": args.revision or "working tree at " + subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "documents": args.documents, "shard_size": args.shard_size,
        "input_mib": round(input_mib, 1), "peak_rss_mib": round(peak_kib / 1024, 1),
        "wall_s": round(seconds, 1),
    }  # fmt: skip
    print(json.dumps(row, indent=2))
    runs = json.loads(MEMORY_RESULT.read_text("utf-8")) if MEMORY_RESULT.exists() else []
    MEMORY_RESULT.write_text(json.dumps([*runs, row], indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
