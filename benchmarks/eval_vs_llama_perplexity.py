"""Our evaluation suite (eval_quant) against `llama-perplexity --kl-divergence` on the same files.

For each model set (a label, a reference .gguf and candidate .gguf files) both tools run on the
same text and context:

- llama.cpp: `llama-perplexity -m REF --kl-divergence-base base.kld` (the base pass), then
  `llama-perplexity -m CAND --kl-divergence-base base.kld --kl-divergence` per candidate;
- ours: `eval_quant.suite` with the reference .gguf file, in a fresh process, timed per phase
  (building the reference cache; each candidate pass).

It prints and records every statistic llama-perplexity prints next to ours (with llama's printed
uncertainty), the token and chunk counts, the tokens llama.cpp stored in base.kld against the ones
our cache holds, tokens/s of each pass, and the size of our cache against base.kld. Each process
also records how much CPU time other processes took while it ran (`other_cpu_s`), because on a
shared machine that slows a pass. Nothing is downloaded.

    python3 benchmarks/eval_vs_llama_perplexity.py --llama-perplexity BIN/llama-perplexity \\
        --text /tmp/bench_eval/eval.txt --ctx 256 --threads 2 --batch 256 \\
        --model tiny REF.gguf Q8_0.gguf Q4_K_M.gguf Q2_K.gguf --model mid REF.gguf Q4_K_M.gguf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT_JSON = REPO / "benchmarks" / "results" / "eval_vs_llama_perplexity.json"
TICKS = os.sysconf("SC_CLK_TCK")

# Printed label of llama-perplexity → (path in our `statistics`, scale to printed units).
PERCENT = 100.0
KLD_LINES = [
    ("Maximum KLD", "max"),
    ("99.9%   KLD", "p99_9"),
    ("99.0%   KLD", "p99"),
    ("95.0%   KLD", "p95"),
    ("90.0%   KLD", "p90"),
    ("Median  KLD", "median"),
    ("10.0%   KLD", "p10"),
    (" 5.0%   KLD", "p5"),
    (" 1.0%   KLD", "p1"),
    (" 0.1%   KLD", "p0_1"),
    ("Minimum KLD", "min"),
]
P_DIFF_LINES = [
    ("Maximum Δp", "max"),
    ("99.9%   Δp", "p99_9"),
    ("99.0%   Δp", "p99"),
    ("95.0%   Δp", "p95"),
    ("90.0%   Δp", "p90"),
    ("75.0%   Δp", "p75"),
    ("Median  Δp", "median"),
    ("25.0%   Δp", "p25"),
    ("10.0%   Δp", "p10"),
    (" 5.0%   Δp", "p5"),
    (" 1.0%   Δp", "p1"),
    (" 0.1%   Δp", "p0_1"),
    ("Minimum Δp", "min"),
]


def ours_printed(stats: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    """Our statistics under llama-perplexity's labels, in its units, at full precision."""
    rows: dict[str, tuple[float, float | None]] = {}
    for label, key in [
        ("Mean PPL(Q)", "ppl"),
        ("Mean PPL(base)", "ppl_base"),
        ("Mean ln(PPL(Q)/PPL(base))", "ln_ppl_ratio"),
        ("Mean PPL(Q)/PPL(base)", "ppl_ratio"),
        ("Mean PPL(Q)-PPL(base)", "ppl_diff"),
    ]:
        rows[label] = (stats[key]["value"], stats[key]["uncertainty"])
    rows["Cor(ln(PPL(Q)), ln(PPL(base)))"] = (PERCENT * stats["correlation"], None)
    rows["Mean    KLD"] = (stats["kld"]["mean"], stats["kld"]["uncertainty"])
    rows.update({label: (stats["kld"][key], None) for label, key in KLD_LINES})
    p_diff = stats["p_diff"]
    rows["Mean    Δp"] = (PERCENT * p_diff["mean"], PERCENT * p_diff["uncertainty"])
    rows.update({label: (PERCENT * p_diff[key], None) for label, key in P_DIFF_LINES})
    for label, key in [("RMS Δp", "rms_p_diff"), ("Same top p", "same_top")]:
        rows[label] = (PERCENT * stats[key]["value"], PERCENT * stats[key]["uncertainty"])
    return rows


LINE = re.compile(r"^(?P<label>[^:]+?)\s*:\s*(?P<value>-?[\d.]+)\s*%?\s*(?:±\s*(?P<unc>[\d.]+))?")


def parse_llama(log: str) -> dict[str, Any]:
    """The final blocks of a `--kl-divergence` log, plus chunk count and timing lines."""
    rows: dict[str, tuple[float, float | None]] = {}
    start = log.rfind("====== Perplexity statistics ======")
    for raw in log[start:].splitlines() if start >= 0 else []:
        line = re.sub(r"^\d+\.\d+\.\d+\.\d+ [IWED] ", "", raw).strip()
        match = LINE.match(line)
        if match:
            label = match["label"].strip()
            label = {"Mean Δp": "Mean    Δp"}.get(label, label)
            unc = float(match["unc"]) if match["unc"] else None
            rows[_llama_label(label)] = (float(match["value"]), unc)
    return {"rows": rows, **_run_info(log)}


def _llama_label(label: str) -> str:
    """Map the stripped label back to the padded form used in KLD_LINES / P_DIFF_LINES."""
    for known, _ in KLD_LINES + P_DIFF_LINES:
        if known.strip() == label:
            return known
    return label


def _run_info(log: str) -> dict[str, Any]:
    info: dict[str, Any] = {}
    match = re.search(r"over (\d+) chunks, n_ctx=(\d+)", log)
    if match:
        info["chunks"], info["n_ctx"] = int(match[1]), int(match[2])
    match = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", log)
    if match:
        info["final_ppl"] = (float(match[1]), float(match[2]))
    match = re.search(r"tokenization took ([\d.]+) ms", log)
    if match:
        info["tokenization_s"] = float(match[1]) / 1000
    return info


def read_base_kld(path: Path) -> dict[str, Any]:
    """The header of llama.cpp's base file: n_ctx, n_vocab, n_chunk and the evaluated tokens."""
    with path.open("rb") as handle:
        if handle.read(8) != b"_logits_":
            raise ValueError(f"{path} is not a llama-perplexity logits file")
        n_ctx, n_vocab, n_chunk = np.frombuffer(handle.read(12), dtype="<i4")
        tokens = np.frombuffer(handle.read(4 * int(n_ctx) * int(n_chunk)), dtype="<i4")
    return {"n_ctx": int(n_ctx), "n_vocab": int(n_vocab), "chunks": int(n_chunk), "tokens": tokens}


def busy_ticks() -> int:
    """CPU ticks spent by all processes on the machine (user + nice + system + irq + softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6))


def timed(command: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `command` to completion, its output to `log`; wall and CPU time, others' CPU time."""
    before, start = busy_ticks(), time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    others = (busy_ticks() - before) / TICKS - (usage.ru_utime + usage.ru_stime)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "other_cpu_s": max(0.0, others),
        "peak_rss_gib": usage.ru_maxrss / 2**20,
    }


def run_llama(
    binary: Path, ref: Path, candidates: list[Path], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    common = ["-f", str(args.text), "-c", str(args.ctx), "-b", str(args.batch)]
    common += ["-t", str(args.threads), "-fa", args.flash_attn]
    if args.chunks:
        common += ["--chunks", str(args.chunks)]
    base = work / "base.kld"
    out: dict[str, Any] = {}
    cmd = [str(binary), "-m", str(ref), *common, "--kl-divergence-base", str(base)]
    out["base"] = {"command": cmd, **timed(cmd, work / "llama_base.log")}
    out["base"].update(_run_info((work / "llama_base.log").read_text(errors="replace")))
    out["base_kld_bytes"] = base.stat().st_size
    out["candidates"] = {}
    for cand in candidates:
        cmd = [str(binary), "-m", str(cand), *common, "--kl-divergence-base", str(base)]
        cmd.append("--kl-divergence")
        log = work / f"llama_kl_{cand.stem}.log"
        out["candidates"][cand.name] = {
            "command": cmd,
            **timed(cmd, log),
            **parse_llama(log.read_text(errors="replace")),
        }
    return out


def run_ours(ref: Path, candidates: list[Path], args: argparse.Namespace, work: Path) -> dict:
    """Our suite in a fresh process (the `--worker` mode below), timed per phase."""
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    spec = {
        "reference": str(ref),
        "candidates": [str(c) for c in candidates],
        "text": str(args.text),
        "ctx": args.ctx,
        "chunks": args.chunks,
        "cache": str(cache),
        "out": str(work / "ours.json"),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    process = timed(cmd, work / "ours.log")
    result = json.loads((work / "ours.json").read_text())
    result["process"] = process
    return result


def worker(spec: dict[str, Any]) -> None:
    """Inside the fresh process: the suite's phases, each timed, with others' CPU time."""
    import gc

    start = time.perf_counter()
    from eval_quant.models import describe
    from eval_quant.suite import EvalText, Settings, evaluate, reference_cache, results_header

    phases: dict[str, Any] = {"import_s": time.perf_counter() - start}
    settings = Settings(n_ctx=spec["ctx"], chunks=spec["chunks"], cache_dir=Path(spec["cache"]))
    text = EvalText(Path(spec["text"]).name, Path(spec["text"]).read_text("utf-8"))

    def phase(fn):
        before, t0, cpu0 = busy_ticks(), time.perf_counter(), time.process_time()
        value = fn()
        gc.collect()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        others = (busy_ticks() - before) / TICKS - cpu
        return value, {"wall_s": wall, "cpu_s": cpu, "other_cpu_s": max(0.0, others)}

    (cache, status), phases["reference"] = phase(
        lambda: reference_cache(describe(Path(spec["reference"])), text, settings)
    )
    header = results_header(cache, settings, status)
    header["candidates"] = []
    phases["candidates"] = {}
    for path in map(Path, spec["candidates"]):
        row, timing = phase(lambda p=path: evaluate(describe(p), cache, text, settings))
        row.pop("chunks", None)
        header["candidates"].append(row)
        phases["candidates"][path.name] = timing
    header["phases"] = phases
    header["cache_tokens"] = cache.tokens.astype(int).tolist()
    Path(spec["out"]).write_text(json.dumps(header), "utf-8")


def compare_model(label: str, ref: Path, cands: list[Path], args: argparse.Namespace) -> dict:
    work = args.work_dir / label
    work.mkdir(parents=True, exist_ok=True)
    print(f"[{label}] llama-perplexity …", file=sys.stderr, flush=True)
    llama = run_llama(args.llama_perplexity, ref, cands, args, work)
    print(f"[{label}] ours …", file=sys.stderr, flush=True)
    ours = run_ours(ref, cands, args, work)

    base = read_base_kld(work / "base.kld")
    ours_tokens = np.asarray(ours.pop("cache_tokens"))
    n_ctx, chunks = ours["n_ctx"], ours["chunks"]
    evaluated = chunks * n_ctx
    tokens = {
        "text_tokens_ours": ours["tokens"]["text"],
        "chunks_ours": chunks,
        "chunks_llama": base["chunks"],
        "chunks_expected": ours["tokens"]["text"] // n_ctx,
        "scored_per_candidate": ours["tokens"]["scored"],
        "identical_token_ids": bool(
            len(base["tokens"]) == len(ours_tokens) and np.array_equal(base["tokens"], ours_tokens)
        ),
        "evaluated": evaluated,
    }
    # Speed: tokens run through the model per second of wall clock, per pass.
    speed = {
        "reference_tok_s_ours": evaluated / ours["phases"]["reference"]["wall_s"],
        "base_tok_s_llama": evaluated / llama["base"]["wall_s"],
    }
    agreement = {}
    for cand in cands:
        theirs = llama["candidates"][cand.name]
        row = next(c for c in ours["candidates"] if Path(c["path"]).name == cand.name)
        agreement[cand.name] = table(ours_printed(row["statistics"]), theirs["rows"])
        agreement[cand.name].append(_final_ppl_row(ours, llama["base"]))
        speed[f"{cand.name}_tok_s_ours"] = (
            evaluated / ours["phases"]["candidates"][cand.name]["wall_s"]
        )
        speed[f"{cand.name}_tok_s_llama"] = evaluated / theirs["wall_s"]
    speed["reference_pass_ratio_ours_over_llama"] = (
        speed["reference_tok_s_ours"] / speed["base_tok_s_llama"]
    )
    ratios = [speed[f"{c.name}_tok_s_ours"] / speed[f"{c.name}_tok_s_llama"] for c in cands]
    speed["candidate_pass_ratio_ours_over_llama"] = ratios
    size = {
        "cache_bytes_ours": ours["cache"]["size_bytes"],
        "base_kld_bytes_llama": llama["base_kld_bytes"],
        "ratio_ours_over_llama": ours["cache"]["size_bytes"] / llama["base_kld_bytes"],
    }
    return {
        "reference": str(ref),
        "candidates": [str(c) for c in cands],
        "tokens": tokens,
        "speed": speed,
        "size": size,
        "agreement": agreement,
        "llama": llama,
        "ours": ours,
    }


def table(ours: dict, theirs: dict) -> list[dict[str, Any]]:
    rows = []
    for label, (value, unc) in ours.items():
        if label not in theirs:
            rows.append({"statistic": label, "ours": value, "ours_unc": unc, "llama": None})
            continue
        llama_value, llama_unc = theirs[label]
        diff = value - llama_value
        rows.append(
            {
                "statistic": label,
                "ours": value,
                "ours_unc": unc,
                "llama": llama_value,
                "llama_unc": llama_unc,
                "diff": diff,
                "diff_over_llama_unc": diff / llama_unc if llama_unc else None,
            }
        )
    return rows


def _final_ppl_row(ours: dict, base: dict) -> dict[str, Any]:
    """The base pass's own 'Final estimate: PPL' against our reference's PPL."""
    value = ours["reference_stats"]["ppl"]
    llama_value, llama_unc = base.get("final_ppl", (math.nan, math.nan))
    return {
        "statistic": "base pass: Final estimate PPL",
        "ours": value,
        "ours_unc": None,
        "llama": llama_value,
        "llama_unc": llama_unc,
        "diff": value - llama_value,
        "diff_over_llama_unc": (value - llama_value) / llama_unc if llama_unc else None,
    }


def print_report(label: str, result: dict[str, Any]) -> None:
    tok, speed, size = result["tokens"], result["speed"], result["size"]
    print(f"\n## {label}: {result['reference']}")
    print(
        f"tokens: text {tok['text_tokens_ours']}, chunks ours {tok['chunks_ours']} / llama "
        f"{tok['chunks_llama']} (expected {tok['chunks_expected']}), scored "
        f"{tok['scored_per_candidate']}, identical token ids: {tok['identical_token_ids']}"
    )
    for name, rows in result["agreement"].items():
        print(f"\n{name}")
        print(f"{'statistic':<34} {'ours':>14} {'llama':>12} {'± llama':>10} {'diff/±':>8}")
        for row in rows:
            ratio = row.get("diff_over_llama_unc")
            unc = row.get("llama_unc")
            print(
                f"{row['statistic']:<34} {row['ours']:>14.6f} "
                f"{_num(row.get('llama')):>12} {_num(unc):>10} "
                f"{(f'{ratio:+.2f}' if ratio is not None else ''):>8}"
            )
    print(
        f"\nspeed (tokens/s, ours / llama): reference {speed['reference_tok_s_ours']:.0f} / ",
        end="",
    )
    print(f"{speed['base_tok_s_llama']:.0f} = {speed['reference_pass_ratio_ours_over_llama']:.2f}")
    for cand, ratio in zip(
        result["candidates"], speed["candidate_pass_ratio_ours_over_llama"], strict=True
    ):
        name = Path(cand).name
        print(
            f"  {name}: {speed[f'{name}_tok_s_ours']:.0f} / {speed[f'{name}_tok_s_llama']:.0f}"
            f" = {ratio:.2f}"
        )
    print(
        f"size: our cache {size['cache_bytes_ours'] / 2**20:.1f} MiB / base.kld "
        f"{size['base_kld_bytes_llama'] / 2**20:.1f} MiB = {size['ratio_ours_over_llama']:.3f}"
    )


def _num(value: float | None) -> str:
    return (
        "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6f}"
    )


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem, 1),
            "kernel": platform.release(), "python": platform.python_version()}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--llama-perplexity", type=Path, help="the llama-perplexity binary")
    parser.add_argument(
        "--model",
        nargs="+",
        action="append",
        metavar="LABEL REF CAND",
        help="a label, the reference .gguf and one or more candidate .gguf files; repeatable",
    )
    parser.add_argument("--text", type=Path, help="evaluation text (.txt, read as-is by both)")
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=None, help="at most this many windows")
    parser.add_argument("--threads", type=int, default=2, help="llama-perplexity -t")
    parser.add_argument("--batch", type=int, default=256, help="llama-perplexity -b")
    parser.add_argument(
        "--flash-attn",
        choices=("on", "off", "auto"),
        default="off",
        help="llama-perplexity -fa (default off: our GGUF runner, llama-cpp-python, runs without "
        "flash attention; llama-perplexity's own default is auto, i.e. on for the CPU)",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_eval/run"))
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    if not (args.llama_perplexity and args.model and args.text):
        parser.error("--llama-perplexity, --model and --text are required")
    from importlib.metadata import version

    results: dict[str, Any] = {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "versions": {p: version(p) for p in ("llama_cpp_python", "numpy", "gguf")},
        "settings": {
            "ctx": args.ctx,
            "chunks": args.chunks,
            "threads": args.threads,
            "batch": args.batch,
            "flash_attn": args.flash_attn,
            "text": str(args.text),
        },
        "models": {},
    }
    for spec in args.model:
        if len(spec) < 3:
            parser.error("--model takes LABEL REF CAND [CAND ...]")
        label, ref, cands = spec[0], Path(spec[1]), [Path(p) for p in spec[2:]]
        results["models"][label] = compare_model(label, ref, cands, args)
        print_report(label, results["models"][label])
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=_jsonable) + "\n", "utf-8")
    print(f"\nwrote {args.json}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


if __name__ == "__main__":
    main()
