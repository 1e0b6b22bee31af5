"""EXL2 end to end on a CUDA GPU: export the tiny model to 4.0 bpw, load it, compare with FP16.

exllamav2 quantizes and runs only on CUDA. On a CPU the tests cover everything around it
(arguments, calibration Parquet, manifest, refusals); where a CUDA device and exllamav2 are, the
test suite also exports the tiny fixture for real and evaluates it
(tests/test_all_formats.py::test_exl2_export_is_evaluated_like_the_others). This script records
the measurements on a better-trained tiny model: our `export --format exl2` runs exllamav2's
converter, `Exl2Runner` loads the artifact with exllamav2, `eval` compares its logits with the
FP16 checkpoint's on the same windows, and exllamav2 generates a few tokens. Without a CUDA device
or without exllamav2 (the condition of tests/cuda.py) it says which and exits 2.

    pip install torch 'bielik-quant[exl2]'   # on the GPU machine
    python3 benchmarks/exl2_gpu_check.py --work /tmp/exl2-check
    # writes benchmarks/results/exl2_gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from importlib import util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "exl2_gpu_check.json"
VARIANT = "4.0bpw-h6"


def cli(*args: str) -> None:
    """One `bielik-quant` command in its own process, failing loudly."""
    print("$ bielik-quant", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "bielik_quant", *args], check=True, cwd=REPO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/exl2-check"))
    parser.add_argument("--steps", type=int, default=1000, help="tiny-model training steps")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("exl2_gpu_check: no CUDA device here; run it on a machine with an NVIDIA GPU")
        return 2
    if util.find_spec("exllamav2") is None:
        print("exl2_gpu_check: exllamav2 is not installed: pip install 'bielik-quant[exl2]'")
        return 2
    model, out = args.work / "tiny-mistral", args.work / "artifacts"
    results = args.work / "results.json"
    started = time.monotonic()
    if not model.exists():
        cli("make-tiny-model", "--out", str(model), "--steps", str(args.steps))
    cli("export", str(model), "--format", "exl2", "-v", VARIANT, "--out", str(out),
        "--n-ctx", "256", "--overwrite")  # fmt: skip
    artifact = out / f"{model.name}-EXL2-{VARIANT}"
    cli("eval", "--reference", str(model), "--candidate", str(artifact), "--out", str(results),
        "--ctx", "256", "--cache-dir", str(args.work / "cache"), "--overwrite")  # fmt: skip

    from quantize.registry import get_format

    runner = get_format("exl2").open(artifact, n_ctx=256)
    sample = runner.generate("Kraków to miasto", 16)
    row = json.loads(results.read_text("utf-8"))["candidates"][0]
    manifest = json.loads((artifact / "bielik-quant.json").read_text("utf-8"))
    record = {
        "command": "python3 benchmarks/exl2_gpu_check.py " + " ".join(sys.argv[1:]),
        "gpu": torch.cuda.get_device_name(0),
        "python": platform.python_version(),
        "versions": manifest["versions"],
        "variant": VARIANT,
        "bits_per_weight": manifest["bits_per_weight"],
        "size_bytes": manifest["size_bytes"],
        "statistics": {key: row["statistics"][key] for key in ("ppl", "ppl_base", "kld",
                                                               "rms_p_diff", "same_top")},
        "generated": sample,
        "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", "utf-8")
    kld = row["statistics"]["kld"]
    print(f"EXL2 {VARIANT}: {manifest['bits_per_weight']:.3f} bpw, mean KLD {kld['mean']:.6f} "
          f"± {kld['uncertainty']:.6f}, same top {row['statistics']['same_top']['value']:.3%}; "
          f"generated {sample!r}; wrote {RESULT}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
