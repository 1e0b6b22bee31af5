"""Every CPU format on one model: export cost, size and the quality each variant keeps.

For each (format, variant) the script runs `bielik-quant export` in a fresh process and records
its wall time and peak RSS (the child's `ru_maxrss`). Times are reported as ratios against the
GGUF Q4_K_M export in the same run, so the machine's speed cancels out. Then one `bielik-quant
eval` compares every artifact with the FP16 checkpoint on the same windows of the corpus's eval
split, and `bielik-quant report` writes the Table 8 report. Nothing is downloaded: the model is
the tests' tiny Mistral, trained for `--steps` steps.

    python3 benchmarks/formats_on_tiny_model.py --work /tmp/formats --steps 1000
    # writes benchmarks/results/formats_on_tiny_model.json and .../formats_report/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PEER = ("gguf", "Q4_K_M")
VARIANTS = {
    "gguf": ["Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K"],
    "gptq": ["w8g128", "w4g128", "w4g128-actorder", "w3g128"],
    "awq": ["w4g128"],
    "hqq": ["8bit-g64", "4bit-g64", "4bit-g128", "3bit-g64", "2bit-g64"],
    "mlx": ["8bit-g64", "6bit-g64", "4bit-g64", "mixed_3_6", "3bit-g64", "2bit-g64"],
}


def timed(args: list[str]) -> tuple[float, int]:
    """Run a command; its wall seconds and peak RSS in MiB (Linux reports ru_maxrss in KiB)."""
    started = time.monotonic()
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        assert process.stderr is not None
        sys.exit(f"failed: {' '.join(args)}\n{process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss // 1024


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bielik_quant", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/formats"))
    parser.add_argument("--steps", type=int, default=1000, help="tiny-model training steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=256)
    args = parser.parse_args()

    model = args.work / f"tiny-mistral-{args.steps}"
    if not model.exists():
        timed(cli("make-tiny-model", "--out", str(model), "--steps", str(args.steps)))
    out = args.work / "artifacts"
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    for fmt, variants in VARIANTS.items():
        for variant in variants:
            export = ["export", str(model), "--format", fmt, "-v", variant, "--out", str(out)]
            export += ["--n-ctx", str(args.ctx), "--threads", str(args.threads)]
            seconds, rss = timed(cli(*export))
            path = out / f"{model.name}-{fmt.upper()}-{variant}"
            manifest = json.loads((path / "bielik-quant.json").read_text("utf-8"))
            rows.append({"format": fmt, "variant": variant, "path": str(path),
                         "export_s": round(seconds, 1), "peak_rss_mib": rss,
                         "bits_per_weight": manifest["bits_per_weight"],
                         "size_bytes": manifest["size_bytes"]})  # fmt: skip
            print(f"{fmt:5} {variant:16} {seconds:6.1f} s {rss:6} MiB "
                  f"{manifest['bits_per_weight']:6.3f} bpw", flush=True)  # fmt: skip

    results = args.work / "results.json"
    evaluation = ["eval", "--reference", str(model), "--out", str(results), "--overwrite"]
    evaluation += ["--ctx", str(args.ctx), "--cache-dir", str(args.work / "cache")]
    for row in rows:
        evaluation += ["--candidate", row["path"]]
    eval_seconds, _ = timed(cli(*evaluation))
    report_dir = RESULTS / "formats_report"
    shutil.rmtree(report_dir, ignore_errors=True)
    timed(cli("report", str(results), "--out", str(report_dir)))

    peer = next(r["export_s"] for r in rows if (r["format"], r["variant"]) == PEER)
    for row, candidate in zip(rows, json.loads(results.read_text())["candidates"], strict=True):
        stats = candidate["statistics"]
        row["export_vs_gguf_q4_k_m"] = round(row["export_s"] / peer, 2)
        row["kld_mean"], row["kld_uncertainty"] = stats["kld"]["mean"], stats["kld"]["uncertainty"]
        row["ppl_ratio"] = stats["ppl_ratio"]["value"]
        row["same_top"] = stats["same_top"]["value"]
        del row["path"]
    record = {
        "command": "python3 benchmarks/formats_on_tiny_model.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "model": f"make-tiny-model --steps {args.steps}",
        "ctx": args.ctx,
        "eval_s": round(eval_seconds, 1),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / "formats_on_tiny_model.json"
    target.write_text(json.dumps(record, indent=2) + "\n", "utf-8")
    print(f"\n{'format':5} {'variant':16} {'bpw':>6} {'KLD':>10} {'same top':>8} {'t/Q4_K_M':>9}")
    for row in rows:
        print(f"{row['format']:5} {row['variant']:16} {row['bits_per_weight']:6.3f} "
              f"{row['kld_mean']:10.6f} {row['same_top']:8.2%} "
              f"{row['export_vs_gguf_q4_k_m']:9.2f}")  # fmt: skip
    print(f"wrote {target} and {report_dir}")


if __name__ == "__main__":
    main()
