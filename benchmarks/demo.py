"""The demo's wall time per stage on this machine, its peak memory, and its Table 8.

Runs `bielik-quant demo` once, from nothing (a new --out and a private cache, so no stage and no
reference logits are reused), under `/usr/bin/time -v` for the peak RSS of the whole process tree
(its largest process: GNU time reports the maximum over the process and its waited-for children).
Each stage's seconds come from its stamp (`stage.json`). The target is under 10 minutes on 2 cores.

    python3 benchmarks/demo.py --work /tmp/demo-bench
    # writes benchmarks/results/demo.json and benchmarks/results/demo_report.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STAGES = ("data", "pretrain", "sft", "export", "eval", "report", "release")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    out = args.work / "demo"
    env = {**os.environ, "XDG_CACHE_HOME": str(args.work / "cache")}
    demo = [sys.executable, "-m", "bielik_quant", "demo", "--out", str(out)]
    command = ["/usr/bin/time", "-v", *demo]
    started = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - started
    if run.returncode:
        sys.exit(f"the demo failed:\n{run.stderr[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)[1])
    seconds = {s: json.loads((out / s / "stage.json").read_text())["seconds"] for s in STAGES}
    record = {
        "command": "python3 benchmarks/demo.py --work " + str(args.work),
        "measures": "bielik-quant demo from nothing: wall seconds per stage (from stage.json), "
        "in total, and the peak RSS of its largest process (/usr/bin/time -v)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "wall_s": round(wall, 1),
        "stages_s": {s: round(v, 1) for s, v in seconds.items()},
        "peak_rss_mib": round(peak_kib / 1024),
        "target_s": 600,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo.json").write_text(json.dumps(record, indent=1) + "\n", "utf-8")
    shutil.copy(out / "report" / "table8" / "report.md", RESULTS / "demo_report.md")
    print(json.dumps(record, indent=1))
    print(run.stdout)


if __name__ == "__main__":
    main()
