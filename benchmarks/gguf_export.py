"""HF → GGUF Q4_K_M export: bielik-quant against llama.cpp's own tools, in the same run.

Ours is one command, `bielik-quant export MODEL --format gguf --variant Q4_K_M --imatrix none`
(our HF → F16 GGUF converter, then llama.cpp's quantizer through llama-cpp-python). The peer is
llama.cpp's `convert_hf_to_gguf.py --outtype f16` followed by `llama-quantize ... Q4_K_M`, both
from the llama.cpp version that llama-cpp-python vendors. Both quantizers get the same threads.

Every step runs in a fresh process. Its wall time, its peak resident set (ru_maxrss through GNU
time, which counts pages of memory-mapped files as well) and the sampled peak of private memory
(RssAnon summed over the process tree, every 0.1 s) are recorded. The checkpoint is read once
before timing so neither side pays for the first read from disk, and with two or more repeats the
order alternates. Afterwards the two Q4_K_M files are compared tensor by tensor.

    python benchmarks/gguf_export.py /tmp/bench/mistral-28l
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LLAMA_CPP = Path(
    os.environ.get("LLAMA_CPP_DIR", "/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp")
)
DEFAULT_QUANTIZE = Path(
    os.environ.get("LLAMA_QUANTIZE", "/tmp/bench/llama.cpp-build/bin/llama-quantize")
)
DEFAULT_JSON = REPO / "benchmarks" / "results" / "gguf_export.json"
VARIANT = "Q4_K_M"
SIDES = ("ours", "peer")
PHASES = ("convert", "quantize")  # ours runs both in one process; its phases are told apart
GIB = 1024**3
GNU_TIME = Path("/usr/bin/time")  # Debian package `time`


# ---------------------------------------------------------------- measuring one process


def _parent_pids() -> dict[int, int]:
    """pid → parent pid for every process on the machine."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name, in parentheses, may hold spaces: the fields after it are fixed.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in _parent_pids().items():
        children.setdefault(parent, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RssAnon, VmRSS) of `pid` in KiB; zeros once it has ended."""
    values = {"RssAnon": 0, "VmRSS": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values["RssAnon"], values["VmRSS"]


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores, all processes)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class TreeMemorySampler(threading.Thread):
    """Samples the private (anonymous) and total resident memory of a process and its children.

    `marker`, when given, is polled with every sample; the time it first returns true splits the
    run into two phases, each with its own peak (used to split ours into convert and quantize).
    """

    def __init__(
        self, pid: int, interval: float = 0.1, marker: Callable[[], bool] | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.marker = marker
        self.start_time = time.perf_counter()
        self.marker_seconds: float | None = None
        self.peak_anon = 0  # bytes, whole run
        self.peak_rss = 0
        self.phase_peak_anon = [0, 0]  # before and after the marker
        self._stop_event = threading.Event()

    def run(self) -> None:
        tree: list[int] = []
        tick = 0
        while not self._stop_event.is_set():
            if tick < 20 or tick % 10 == 0:  # children start early; later, look once a second
                tree = _descendants(self.pid)
            tick += 1
            anon = rss = 0
            for pid in tree:
                pid_anon, pid_rss = _memory_kib(pid)
                anon += pid_anon * 1024
                rss += pid_rss * 1024
            if self.marker_seconds is None and self.marker is not None and self.marker():
                self.marker_seconds = time.perf_counter() - self.start_time
            phase = 0 if self.marker_seconds is None else 1
            self.phase_peak_anon[phase] = max(self.phase_peak_anon[phase], anon)
            self.peak_anon = max(self.peak_anon, anon)
            self.peak_rss = max(self.peak_rss, rss)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class Step:
    """One process: how long it ran and how much memory it held."""

    name: str
    command: list[str]
    seconds: float
    max_rss: int  # bytes: ru_maxrss, the largest process's peak, file-backed mapped pages included
    peak_anon: int  # bytes: sampled peak of private memory, summed over the process tree
    peak_rss_sampled: int  # bytes: sampled peak of VmRSS, summed over the process tree
    cpu_seconds: float  # user + system time of the step's processes
    other_cpu_seconds: float  # CPU time everything else on the machine took meanwhile
    returncode: int
    log: str
    phases: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_step(
    name: str,
    command: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    marker: Callable[[], bool] | None = None,
    phase_names: tuple[str, str] = ("before", "after"),
) -> Step:
    """Run `command` in a fresh process, output to `log_path`, and measure it.

    The peak RSS comes from GNU time, which starts the command from its own small process: Linux
    carries the resident set of whoever forks a process over into that process's ru_maxrss, so
    measured straight from this (larger) Python process, a small step would inherit its size.
    """
    print(f"  {name}: {shlex.join(command)}", file=sys.stderr)
    rss_file = log_path.with_suffix(".maxrss")
    rss_file.unlink(missing_ok=True)
    launcher = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file)] if GNU_TIME.exists() else []
    with log_path.open("wb") as log:
        start, busy_at_start = time.perf_counter(), _busy_cpu_seconds()
        process = subprocess.Popen(
            [*launcher, *command], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        sampler = TreeMemorySampler(process.pid, marker=marker)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        busy = _busy_cpu_seconds() - busy_at_start
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
    cpu_seconds = usage.ru_utime + usage.ru_stime  # GNU time's, which include its child's
    max_rss_kib = usage.ru_maxrss  # the fallback: an upper bound (see above)
    if launcher and rss_file.exists():
        # After a failure GNU time writes a line about it first; the figure is always last.
        max_rss_kib = int(rss_file.read_text().split()[-1])
    step = Step(
        name=name,
        command=command,
        seconds=round(seconds, 2),
        max_rss=max_rss_kib * 1024,
        cpu_seconds=round(cpu_seconds, 1),
        other_cpu_seconds=round(max(0.0, busy - cpu_seconds), 1),
        peak_anon=sampler.peak_anon,
        peak_rss_sampled=sampler.peak_rss,
        returncode=process.returncode,
        log=str(log_path),
    )
    if sampler.marker_seconds is not None:
        split = sampler.marker_seconds
        step.phases = {
            phase_names[0]: {"seconds": round(split, 2), "peak_anon": sampler.phase_peak_anon[0]},
            phase_names[1]: {
                "seconds": round(seconds - split, 2),
                "peak_anon": sampler.phase_peak_anon[1],
            },
        }
    status_text = "ok" if step.ok else f"FAILED (exit {step.returncode}, see {log_path})"
    print(
        f"    {seconds:.1f} s, maxrss {step.max_rss / GIB:.2f} GiB: {status_text}", file=sys.stderr
    )
    return step


# ---------------------------------------------------------------- the two sides


@dataclass
class SideRun:
    side: str
    steps: list[Step]
    q4_path: str | None = None
    f16_path: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps) and self.q4_path is not None

    @property
    def seconds(self) -> float:
        return round(sum(step.seconds for step in self.steps), 2)

    @property
    def max_rss(self) -> int:
        return max(step.max_rss for step in self.steps)

    @property
    def peak_anon(self) -> int:
        return max(step.peak_anon for step in self.steps)

    def to_json(self) -> dict[str, object]:
        return {
            "side": self.side,
            "ok": self.ok,
            "seconds": self.seconds,
            "max_rss": self.max_rss,
            "peak_anon": self.peak_anon,
            "q4_path": self.q4_path,
            "f16_path": self.f16_path,
            "steps": [asdict(step) for step in self.steps],
        }


def gguf_file_type(path: Path) -> int | None:
    """The `general.file_type` of a GGUF file (a llama_ftype), or None if unreadable."""
    import gguf

    try:
        field_ = gguf.GGUFReader(path).fields.get("general.file_type")
    except Exception:  # a half-written or foreign file: not one of the outputs
        return None
    return None if field_ is None else int(field_.contents())


def find_outputs(out_dir: Path) -> tuple[Path | None, Path | None]:
    """(Q4_K_M file, F16 file) among the GGUF files under `out_dir`, by their declared type."""
    import gguf

    q4 = f16 = None
    for path in sorted(out_dir.rglob("*.gguf")):
        file_type = gguf_file_type(path)
        if file_type == gguf.LlamaFileType.MOSTLY_Q4_K_M:
            q4 = path
        elif file_type == gguf.LlamaFileType.MOSTLY_F16:
            f16 = path
    return q4, f16


def run_ours(model: Path, out_dir: Path, threads: int) -> SideRun:
    """`bielik-quant export`, run from this checkout with the interpreter running this script."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "bielik_quant",
        "export",
        str(model),
        "--format",
        "gguf",
        "--variant",
        VARIANT,
        "--imatrix",
        "none",
        "--out",
        str(out_dir),
        "--threads",
        str(threads),
    ]
    pythonpath = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, pythonpath))}

    def quantizing() -> bool:  # the quantizer creates its output file as it starts
        return out_dir.is_dir() and any(
            VARIANT.lower() in path.name.lower() for path in out_dir.rglob("*.gguf")
        )

    log = out_dir.parent / "ours-export.log"
    step = run_step(
        "export", command, log, env=env, cwd=REPO, marker=quantizing, phase_names=PHASES
    )
    ended = time.time()
    q4, f16 = find_outputs(out_dir) if out_dir.is_dir() else (None, None)
    if q4 is not None and "quantize" in step.phases:
        # What follows the quantizer's last write (hashes, manifest, model card) is told apart by
        # the output file's modification time.
        finish = round(max(0.0, ended - q4.stat().st_mtime), 2)
        step.phases["quantize"]["seconds"] = round(step.phases["quantize"]["seconds"] - finish, 2)
        step.phases["finish"] = {"seconds": finish}
    return SideRun("ours", [step], _str(q4), _str(f16))


def run_peer(
    model: Path, out_dir: Path, threads: int, llama_cpp: Path, llama_quantize: Path
) -> SideRun:
    """llama.cpp's converter (with its own gguf-py) to F16, then llama-quantize to Q4_K_M."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    f16 = out_dir / "model-F16.gguf"
    q4 = out_dir / f"model-{VARIANT}.gguf"
    convert = [
        sys.executable,
        str(llama_cpp / "convert_hf_to_gguf.py"),
        str(model),
        "--outtype",
        "f16",
        "--outfile",
        str(f16),
    ]
    env = {**os.environ, "PYTHONPATH": str(llama_cpp / "gguf-py")}
    steps = [run_step("convert", convert, out_dir.parent / "peer-convert.log", env=env)]
    if steps[0].ok:
        quantize = [str(llama_quantize), str(f16), str(q4), VARIANT, str(threads)]
        steps.append(run_step("quantize", quantize, out_dir.parent / "peer-quantize.log"))
    ok = all(step.ok for step in steps) and q4.exists()
    return SideRun("peer", steps, _str(q4) if ok else None, _str(f16) if f16.exists() else None)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


# ---------------------------------------------------------------- comparing the outputs


def compare_in_subprocess(ours: str, peer: str) -> dict[str, object]:
    """Run compare_gguf.py on the two files in a process of its own (see its docstring)."""
    script = Path(__file__).with_name("compare_gguf.py")
    result = subprocess.run(
        [sys.executable, str(script), ours, peer], capture_output=True, text=True
    )
    if result.returncode != 0:  # keep the timings: report the failure instead of raising
        return {"error": result.stderr.strip()[-2000:] or f"exit status {result.returncode}"}
    return json.loads(result.stdout)


# ---------------------------------------------------------------- the model and the machine


def describe_model(model: Path) -> dict[str, object]:
    """Size on disk, shapes and the largest tensor, from config.json and the safetensors headers."""
    config = json.loads((model / "config.json").read_text("utf-8"))
    largest: tuple[int, str, list[int], str] = (0, "", [], "")
    parameters = 0
    for path in sorted(model.glob("*.safetensors")):
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            parameters += count
            largest = max(largest, (count, name, info["shape"], info["dtype"]))
    count, name, shape, dtype = largest
    return {
        "path": str(model),
        "architecture": (config.get("architectures") or ["?"])[0],
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "intermediate_size": config.get("intermediate_size"),
        "vocab_size": config.get("vocab_size"),
        "parameters": parameters,
        "bytes_on_disk": sum(p.stat().st_size for p in model.iterdir() if p.is_file()),
        "largest_tensor": {
            "name": name,
            "shape": shape,
            "dtype": dtype,
            "bytes_as_stored": count * 2 if dtype in ("BF16", "F16") else count * 4,
            "bytes_f32": count * 4,
        },
    }


def warm_page_cache(model: Path) -> float:
    """Read every file of the checkpoint once, so no side pays for the first read from disk."""
    start = time.perf_counter()
    for path in sorted(model.iterdir()):
        if path.is_file():
            with path.open("rb") as handle:
                while handle.read(64 << 20):
                    pass
    return round(time.perf_counter() - start, 1)


def _git(llama_cpp: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(llama_cpp), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip() or None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions(llama_cpp: Path, quantize_log: Path | None) -> dict[str, object]:
    """What ran: the llama.cpp tree and build, and the Python packages on each side."""
    vendored_gguf = None
    pyproject = llama_cpp / "gguf-py" / "pyproject.toml"
    if pyproject.exists():
        match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
        vendored_gguf = match and match.group(1)
    build = None
    if quantize_log is not None and quantize_log.exists():
        match = re.search(r"version: .*\(build \d+, commit \w+\)", quantize_log.read_text("utf-8"))
        build = match and match.group(0)
    return {
        "llama_cpp_tree": str(llama_cpp),
        "llama_cpp_commit": _git(llama_cpp, "rev-parse", "HEAD"),
        "llama_cpp_commit_date": _git(llama_cpp, "log", "-1", "--format=%cI"),
        "llama_quantize_build": build,
        "gguf_py_vendored": vendored_gguf,
        "python": platform.python_version(),
        **{
            package: _package_version(package)
            for package in (
                "bielik-quant",
                "llama_cpp_python",
                "gguf",
                "torch",
                "transformers",
                "safetensors",
                "numpy",
            )
        },
    }


def machine() -> dict[str, object]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    meminfo = Path("/proc/meminfo").read_text().split()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024,
        "load_average_at_start": os.getloadavg(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------- report


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


def summarise(runs: list[dict[str, SideRun]]) -> dict[str, object]:
    """Median time and highest memory per side over the repeats, and ours/peer ratios."""
    summary: dict[str, object] = {}
    for side in SIDES:
        good = [run[side] for run in runs if side in run and run[side].ok]
        summary[side] = (
            {
                "ok": True,
                "seconds_median": round(statistics.median(r.seconds for r in good), 2),
                "seconds_all": [r.seconds for r in good],
                "max_rss": max(r.max_rss for r in good),
                "peak_anon": max(r.peak_anon for r in good),
            }
            if good
            else {"ok": False}
        )
    ours, peer = summary["ours"], summary["peer"]
    summary["ratio_ours_over_peer"] = {
        "time": _ratio(ours.get("seconds_median"), peer.get("seconds_median")),
        "max_rss": _ratio(ours.get("max_rss"), peer.get("max_rss")),
        "peak_anon": _ratio(ours.get("peak_anon"), peer.get("peak_anon")),
    }
    return summary


def print_report(
    runs: list[dict[str, SideRun]], summary: dict[str, object], model_info: dict[str, object]
) -> None:
    largest = model_info["largest_tensor"]
    print(
        f"\nModel: {model_info['layers']} layers, {model_info['parameters'] / 1e9:.2f} B "
        f"parameters, {model_info['bytes_on_disk'] / GIB:.2f} GiB on disk; largest tensor "
        f"{largest['name']} {largest['shape']} = {largest['bytes_as_stored'] / GIB:.3f} GiB "
        f"({largest['bytes_f32'] / GIB:.3f} GiB as f32)"
    )
    header = (
        f"{'run':>3}  {'side':<4}  {'step':<22} {'time s':>8} {'maxRSS GiB':>11} {'anon GiB':>9}"
        f" {'other CPU s':>12}"
    )
    print(header)
    print("-" * len(header))
    for number, run in enumerate(runs, start=1):
        for side in run:
            side_run = run[side]
            for step in side_run.steps:
                label = step.name if step.ok else f"{step.name} (FAILED)"
                print(
                    f"{number:>3}  {side:<4}  {label:<22} {step.seconds:>8.1f} "
                    f"{step.max_rss / GIB:>11.2f} {step.peak_anon / GIB:>9.2f}"
                    f" {step.other_cpu_seconds:>12.1f}"
                )
                for phase, values in step.phases.items():
                    anon = values.get("peak_anon")
                    print(
                        f"{'':>3}  {'':<4}    ~{phase:<19} {values['seconds']:>8.1f} "
                        f"{'':>11} {'' if anon is None else f'{anon / GIB:.2f}':>9}"
                    )
            if len(side_run.steps) > 1:
                print(
                    f"{number:>3}  {side:<4}  {'total':<22} {side_run.seconds:>8.1f} "
                    f"{side_run.max_rss / GIB:>11.2f} {side_run.peak_anon / GIB:>9.2f}"
                    f" {sum(step.other_cpu_seconds for step in side_run.steps):>12.1f}"
                )
    ratio = summary["ratio_ours_over_peer"]
    print(
        f"\nours/peer: time {ratio['time']}, peak RSS {ratio['max_rss']}, "
        f"peak private memory {ratio['peak_anon']}"
    )
    print(
        "(other CPU s: CPU time other processes on the machine took during the step; "
        "anything well above zero slowed it down)"
    )


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="Hugging Face checkpoint directory")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench/gguf-export"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--order",
        choices=("alternate", "ours-first", "peer-first"),
        default="alternate",
        help="who runs first in each repeat (alternate: ours first in odd repeats)",
    )
    parser.add_argument("--only", choices=SIDES, help="run one side only (e.g. to check it)")
    parser.add_argument("--llama-cpp", type=Path, default=DEFAULT_LLAMA_CPP)
    parser.add_argument("--llama-quantize", type=Path, default=DEFAULT_QUANTIZE)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--keep", action="store_true", help="keep the last repeat's GGUF files")
    args = parser.parse_args(argv)

    model = args.model.resolve()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    host = machine()
    model_info = describe_model(model)
    print(f"Warming the page cache with {model} ...", file=sys.stderr)
    warm_seconds = warm_page_cache(model)

    runs: list[dict[str, SideRun]] = []
    agreement: dict[str, object] | None = None
    for repeat in range(args.repeats):
        ours_first = args.order == "ours-first" or (args.order == "alternate" and repeat % 2 == 0)
        order = [s for s in (SIDES if ours_first else SIDES[::-1]) if args.only in (None, s)]
        print(f"Repeat {repeat + 1}/{args.repeats}: {' then '.join(order)}", file=sys.stderr)
        run: dict[str, SideRun] = {}
        for side in order:
            if side == "ours":
                run[side] = run_ours(model, work / "ours", args.threads)
            else:
                run[side] = run_peer(
                    model, work / "peer", args.threads, args.llama_cpp, args.llama_quantize
                )
        runs.append(run)
        if agreement is None and all(side in run and run[side].ok for side in SIDES):
            print("Comparing the Q4_K_M files ...", file=sys.stderr)
            agreement = {"q4_k_m": compare_in_subprocess(run["ours"].q4_path, run["peer"].q4_path)}
            f16_paths = (run["ours"].f16_path, run["peer"].f16_path)
            if not agreement["q4_k_m"].get("bytes_identical") and all(f16_paths):
                # Different quantized bytes: see whether the F16 files already differ.
                print("Comparing the F16 files ...", file=sys.stderr)
                agreement["f16"] = compare_in_subprocess(*f16_paths)
        if not (args.keep and repeat == args.repeats - 1):
            for side in run:
                shutil.rmtree(work / side, ignore_errors=True)

    summary = summarise(runs)
    peer_log = work / "peer-quantize.log"
    result = {
        "benchmark": "HF -> GGUF F16 -> Q4_K_M export, bielik-quant vs llama.cpp",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "started": started,
        "machine": host,
        "model": model_info,
        "threads": args.threads,
        "page_cache_warmup_seconds": warm_seconds,
        "runs": [
            {"repeat": number, "order": list(run), **{side: run[side].to_json() for side in run}}
            for number, run in enumerate(runs, start=1)
        ],
        "summary": summary,
        "peak_anon_in_largest_tensors_f32": {
            side: round(summary[side]["peak_anon"] / model_info["largest_tensor"]["bytes_f32"], 2)
            for side in SIDES
            if summary[side].get("ok")
        },
        "agreement": agreement,
        "load_average_at_end": os.getloadavg(),
        "versions": versions(args.llama_cpp, peer_log),
        "notes": [
            "max_rss is each step's peak resident set (ru_maxrss, as /usr/bin/time reports it), "
            "which includes pages of memory-mapped files (the safetensors shards, llama.cpp's "
            "mmap of the F16 GGUF)"
            + ("." if GNU_TIME.exists() else "; without /usr/bin/time it is an upper bound."),
            "peak_anon is the peak of RssAnon summed over the step's process tree, sampled every "
            "0.1 s: the private memory the step allocated.",
            "other_cpu_seconds is the machine's busy CPU time during the step (/proc/stat) "
            "less the step's own: other processes competing for the cores.",
            "ours is one process; its convert/quantize phases are split at the moment a Q4_K_M "
            "file appears in its output directory, and 'finish' (after the quantizer's last "
            "write: hashes, manifest, model card) at that file's modification time "
            "(approximate).",
        ],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    print_report(runs, summary, model_info)
    if agreement is not None:
        q4 = agreement["q4_k_m"]
        print(
            f"Q4_K_M outputs: same names/shapes/types {q4.get('same_names_shapes_types')}, "
            f"identical tensor bytes {q4.get('bytes_identical')}"
            + (f"; comparison failed: {q4['error'].splitlines()[-1]}" if "error" in q4 else "")
        )
    print(f"Wrote {args.json}")
    return 0 if all(run[side].ok for run in runs for side in run) else 1


if __name__ == "__main__":
    sys.exit(main())
