"""Training throughput: our trainer against Hugging Face `transformers.Trainer`, same everything.

Both train the tiny-pretrain recipe's model from the same initial weights on the same packed
blocks (our `pack_pretraining`, 128 tokens), global batch 8 from micro-batches of 4, AdamW
(0.9, 0.95), cosine with warmup, clipping at 1.0, bf16 autocast on the CPU, for the same number
of steps. Each side runs in a fresh process; the order alternates over repeats. A step's time is
measured inside each loop (our JSONL log's tokens/s; a Trainer callback for HF), and the median
over steps after the first three is reported, so start-up and data preparation are not counted.
HF computes the loss on 127 of 128 positions per block (it shifts the labels itself), we on 128.

    python3 benchmarks/train_vs_hf_trainer.py --tokenizer DIR --steps 40 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "train_vs_hf_trainer.json"
SKIP = 3  # warm-up steps left out of the median


def ours(tokenizer: str, steps: int, work: Path) -> list[float]:
    """Seconds per step of our trainer (from its tokens/s), in this process."""
    from training.config import load_config
    from training.trainer import train

    config = load_config("tiny-pretrain", [f"tokenizer={tokenizer}", f"out={work / 'ours'}",
                                           f"max_steps={steps}", "save_every=100000"])  # fmt: skip
    train(config)
    tokens = config.global_batch * config.seq_len
    log = (work / "ours" / "log.jsonl").read_text().splitlines()
    return [tokens / json.loads(line)["tokens_per_s"] for line in log]


def hf(tokenizer: str, steps: int, work: Path) -> list[float]:
    """Seconds per step of transformers.Trainer on the same model, blocks and settings."""
    import torch
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from training.config import load_config
    from training.distributed import World
    from training.trainer import build_model, prepare_samples

    config = load_config("tiny-pretrain", [f"tokenizer={tokenizer}", f"max_steps={steps}"])
    tok = AutoTokenizer.from_pretrained(tokenizer)
    samples = prepare_samples(config, tok, work / "hf-data", World(0, 1, torch.device("cpu")))
    torch.manual_seed(config.seed)
    model = build_model(config, tok)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(samples)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            ids = torch.as_tensor(samples.inputs[i]).long()
            return {"input_ids": ids, "labels": ids}

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *args: object, **kwargs: object) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *args: object, **kwargs: object) -> None:
            times.append(time.perf_counter() - self.started)

    arguments = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=config.micro_batch,
        gradient_accumulation_steps=config.global_batch // config.micro_batch,
        max_steps=steps, learning_rate=config.lr, lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps, weight_decay=config.weight_decay,
        adam_beta1=config.betas[0], adam_beta2=config.betas[1], max_grad_norm=config.clip_grad,
        bf16=True, use_cpu=True, save_strategy="no", report_to=[], logging_steps=10**6,
        dataloader_num_workers=0, seed=config.seed, disable_tqdm=True,
    )  # fmt: skip
    Trainer(model=model, args=arguments, train_dataset=Blocks(), callbacks=[StepTimer()]).train()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a tokenizer directory")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--side", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:  # one measurement, in a fresh process
        run = ours if args.side == "ours" else hf
        print(json.dumps(run(args.tokenizer, args.steps, args.work)))
        return
    runs: dict[str, list[float]] = {"ours": [], "hf": []}
    for repeat in range(args.repeats):
        for side in ("ours", "hf") if repeat % 2 == 0 else ("hf", "ours"):
            with tempfile.TemporaryDirectory() as work:
                command = [sys.executable, __file__, "--tokenizer", args.tokenizer, "--steps",
                           str(args.steps), "--side", side, "--work", work]  # fmt: skip
                out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
                step_times = json.loads(out.stdout.strip().splitlines()[-1])
            runs[side].append(statistics.median(step_times[SKIP:]))
            print(f"{side:4} repeat {repeat}: {runs[side][-1] * 1000:.1f} ms/step", flush=True)
    tokens = 8 * 128
    result = {
        "command": "python3 benchmarks/train_vs_hf_trainer.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "ms_per_step": {side: [round(t * 1000, 2) for t in times] for side, times in runs.items()},
        "tokens_per_s": {side: round(tokens / min(times)) for side, times in runs.items()},
        "ours_over_hf_speed": round(min(runs["hf"]) / min(runs["ours"]), 3),
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
