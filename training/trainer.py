"""The training loop: one recipe, one process or many, to a Hugging Face checkpoint.

Read top to bottom: join the process group, build the samples (main process; the others wait and
memory-map them), load or build the model, wrap it (DDP/FSDP), then for each optimizer step run
`grad_accum` micro-batches, scale the LR, clip, step, log and checkpoint. The data order and the
LR are functions of the step, and checkpoints hold model, optimizer and RNG states, so a resumed
run takes exactly the steps an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import checkpoint
from training.config import TrainConfig, pretrained_source
from training.distributed import World, join, leave, unwrap, wrap
from training.loss import IGNORE_INDEX, weighted_token_loss
from training.samples import DataError, Samples, pack_pretraining, pack_sft
from training.schedule import adaptive_lr, cosine_lr

# Fields that may change between a run and its resumption: where and how often it reports.
RESUMABLE_CHANGES = ("max_steps", "log_every", "save_every", "keep_checkpoints", "compile")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a refused resume); the message says why."""


def train(
    config: TrainConfig, resume: bool = False, stop_after: int = 0, on_step: Any = None
) -> Path | None:
    """Train as `config` says; returns the final HF checkpoint directory (`<out>/final`).

    `stop_after` > 0 stops after that many optimizer steps of this run, with a checkpoint, on the
    schedule of the whole run (for time-boxed jobs; `resume` continues it); it returns None then.
    """
    world = join()
    try:
        return _train(config, resume, stop_after, world, on_step)
    finally:
        leave(world)


def _train(
    config: TrainConfig, resume: bool, stop_after: int, world: World, on_step: Any
) -> Path | None:
    out = Path(config.out)
    if world.size > 1 and config.parallel == "none":
        raise TrainingError(f"{world.size} processes need parallel=ddp or parallel=fsdp")
    grad_accum = batch_split(config, world)
    tokenizer = load_tokenizer(config)
    samples = prepare_samples(config, tokenizer, out / "data", world)
    if len(samples) < config.global_batch:  # before the model: the data decides, not the recipe
        raise DataError(
            f"the data gives {len(samples)} {config.task} samples, fewer than one global batch "
            f"of {config.global_batch}; give more data or a smaller global_batch"
        )
    per_epoch = len(samples) // config.global_batch
    steps = config.max_steps if config.epochs == 0 else config.epochs * per_epoch

    torch.manual_seed(config.seed)
    model = build_model(config, tokenizer).to(world.device)
    if config.grad_checkpointing:  # transformers' own, per decoder block; renamed in 5.x
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    model = wrap(model, config.parallel, world)
    trainable = compile_model(model, config)
    optimizer = make_optimizer(model, config, world)

    start = 0
    meta = {"config": dataclasses.asdict(config), "model": model_identity(config)}
    if resume:
        start = resume_from(out, model, optimizer, world, meta)
    elif checkpoint.latest(out) is not None:
        raise TrainingError(f"{out} already holds checkpoints; pass --resume to continue it")

    log = open_log(out / "log.jsonl", start) if world.main else None
    flops_per_token = model_flops_per_token(unwrap(model).config, config.seq_len)
    autocast = autocast_context(config, world)
    stopping = False
    for step in range(start, steps):
        started = time.perf_counter()
        batch = global_batch(samples, step, config)
        loss_tokens = int((batch[1] != IGNORE_INDEX).sum())  # T: every process computes the same
        lr = adaptive_lr(
            cosine_lr(step, config.lr, config.min_lr, config.warmup_steps, steps),
            loss_tokens,
            config.alr_baseline_tokens,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        local = [part[world.rank :: world.size] for part in batch]  # this process's sequences
        weighted_sum = correct = 0.0
        for micro in range(grad_accum):
            rows = slice(micro * config.micro_batch, (micro + 1) * config.micro_batch)
            inputs, labels, weights = (torch.as_tensor(np.asarray(p[rows])) for p in local)
            inputs, labels = inputs.long().to(world.device), labels.long().to(world.device)
            # Gradients are reduced across processes on the last micro-step only.
            last = micro == grad_accum - 1
            if config.parallel == "fsdp" and world.size > 1:
                model.set_requires_gradient_sync(last)  # FSDP2's switch
            skip_sync = not last and config.parallel == "ddp" and world.size > 1
            with model.no_sync() if skip_sync else nullcontext(), autocast:
                logits = trainable(input_ids=inputs).logits
                total, _, right = weighted_token_loss(logits, labels, weights.to(world.device))
            # DDP and FSDP average gradients over processes; sum/T per process times the world
            # size makes that average the gradient of sum/T over the whole global batch.
            (total * world.size / loss_tokens).backward()
            weighted_sum += float(total.detach())
            correct += float(right)
        weighted_sum, correct = world.all_sum([weighted_sum, correct])
        loss = weighted_sum / loss_tokens
        if not math.isfinite(loss):
            last = checkpoint.latest(out)
            raise TrainingError(
                f"the loss became {loss} at step {step + 1}; stopped without updating the model. "
                f"Last good checkpoint: {last or 'none yet'}"
            )
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        seconds = time.perf_counter() - started
        tokens_per_s = config.global_batch * config.seq_len / seconds
        record = {
            "step": step + 1, "loss": loss, "accuracy": correct / loss_tokens, "lr": lr,
            "grad_norm": grad_norm, "loss_tokens": loss_tokens, "tokens_per_s": tokens_per_s,
            "mfu": mfu(flops_per_token, tokens_per_s / world.size, config.peak_tflops),
        }  # fmt: skip
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
        done = step + 1
        if on_step is not None and world.main and (done % config.log_every == 0 or done == steps):
            on_step(record, steps)
        stopping = stop_after > 0 and done - start == stop_after
        if done % config.save_every == 0 or done == steps or stopping:
            checkpoint.save(model, optimizer, world, out, done, meta, config.keep_checkpoints)
        if stopping:
            break
    if log is not None:
        log.close()
    return None if stopping else save_final(model, tokenizer, config, world, out)


def open_log(path: Path, start: int) -> Any:
    """The JSONL log for appending, without the steps after `start` that a crash left behind
    (a resumed run logs them again, as it takes them again).

    A crash mid-write leaves a torn last line; it is dropped like the other lost steps. The kept
    lines are written to a sibling and renamed over the log, so a second crash here loses nothing.
    """
    if path.is_file():
        lines = path.read_text("utf-8").splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                step = json.loads(line)["step"] if line.strip() else None
            except (json.JSONDecodeError, TypeError, KeyError):
                if number == len(lines):  # torn by the crash that stopped the run
                    break
                raise TrainingError(
                    f"{path}:{number} is not a log record; move the log aside"
                ) from None
            if step is not None and step <= start:
                kept.append(line + "\n")
        staging = path.with_name(f".{path.name}.partial")
        staging.write_text("".join(kept), "utf-8")
        os.replace(staging, path)
    return path.open("a", encoding="utf-8")


def batch_split(config: TrainConfig, world: World) -> int:
    """Micro-steps per optimizer step: global batch = micro_batch * grad_accum * world size."""
    per_step = config.micro_batch * world.size
    if config.global_batch % per_step:
        raise TrainingError(
            f"global_batch {config.global_batch} is not a multiple of micro_batch "
            f"{config.micro_batch} x {world.size} process(es)"
        )
    return config.global_batch // per_step


def global_batch(samples: Samples, step: int, config: TrainConfig) -> list[np.ndarray]:
    """The step's sequences: a seeded permutation per epoch, so the order is the step's function."""
    per_epoch = len(samples) // config.global_batch  # >= 1: _train refuses smaller data
    epoch, offset = divmod(step, per_epoch)
    order = epoch_order(config.seed, epoch, len(samples))
    rows = np.sort(order[offset * config.global_batch : (offset + 1) * config.global_batch])
    return [samples.inputs[rows], samples.labels[rows], samples.weights[rows]]


@functools.lru_cache(maxsize=1)
def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The epoch's permutation of the samples (computed once per epoch, not per step)."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def load_tokenizer(config: TrainConfig) -> Any:
    from transformers import AutoTokenizer

    field = "tokenizer" if config.tokenizer else "model"
    if not getattr(config, field):
        raise TrainingError("the recipe names neither a model nor a tokenizer")
    return from_pretrained(AutoTokenizer, field, getattr(config, field))


def from_pretrained(loader: Any, field: str, value: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained` on a local directory, or on the hub for hf:ORG/NAME only."""
    name, hub = pretrained_source(value)
    where = "from the Hugging Face hub" if hub else "(a local directory)"
    try:
        return loader.from_pretrained(name, local_files_only=not hub, **kwargs)
    except (OSError, ValueError) as err:  # transformers' "not found" / "does not appear to have"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingError(f"{field} {value} {where} cannot be loaded: {first}") from err


def prepare_samples(config: TrainConfig, tokenizer: Any, directory: Path, world: World) -> Samples:
    """Samples built once by the main process (kept for resumption), memory-mapped by all."""
    stamp = directory / "config.json"
    wanted = json.dumps(
        {k: getattr(config, k) for k in ("task", "data", "data_weights", "data_split", "seq_len",
                                         "quality_weights", "seed")}, default=list,
    )  # fmt: skip
    error = None
    if world.main and not (stamp.is_file() and stamp.read_text("utf-8") == wanted):
        shutil.rmtree(directory, ignore_errors=True)
        try:
            build_samples(config, tokenizer, directory)
            stamp.write_text(wanted, "utf-8")  # last: its presence means the samples are complete
        except Exception as err:  # raised below, once the other processes know
            error = err
    # The barrier, carrying whether the main process failed: no process waits for it in vain.
    (failed,) = world.all_sum([float(error is not None)])
    if error is not None:
        raise error
    if failed:
        raise DataError("the main process could not build the samples (its error says why)")
    return Samples.open(directory)


def build_samples(config: TrainConfig, tokenizer: Any, directory: Path) -> Samples:
    from calibration_data import load_records

    if config.task == "sft":
        records = []
        for source in config.data:
            records += load_records("sft") if source == "sft" else read_jsonl(Path(source))
        return pack_sft(tokenizer, records, config.quality_weights, config.seq_len, directory)
    sources = [(source, pretraining_texts(source, config.data_split)) for source in config.data]
    return pack_pretraining(
        tokenizer, sources, config.data_weights, config.seq_len, directory, config.seed
    )


def pretraining_texts(source: str, split: str) -> list[str]:
    """A source's documents: our corpus (its `split`), a text file, or a directory of them
    (the shards `bielik-quant data` writes; its summary.json is not a document file)."""
    from calibration_data import BUILTIN, load

    if source == BUILTIN:
        return load(source, split=split).texts
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl", ".parquet"))
        if not files:
            raise DataError(f"{path} holds no .txt, .jsonl or .parquet files")
        return [text for file in files for text in load(str(file)).texts]
    return load(source).texts


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """SFT records, one JSON object per line, as our corpus's sft/*.jsonl files hold them."""
    from training.data.pipeline import read_jsonl as lines

    if not path.is_file():
        raise DataError(f"{path} does not exist (SFT data: 'sft' or a .jsonl file)")
    return [record for _, record in lines(path)]


def build_model(config: TrainConfig, tokenizer: Any) -> torch.nn.Module:
    """The starting model in float32 (the master weights), with PyTorch SDPA attention."""
    from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

    if config.model:
        return from_pretrained(
            AutoModelForCausalLM, "model", config.model, dtype=torch.float32,
            attn_implementation="sdpa",
        )  # fmt: skip
    model_config = MistralConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        **config.model_config,
    )
    return MistralForCausalLM(model_config)


def compile_model(model: torch.nn.Module, config: TrainConfig) -> Any:
    return torch.compile(model) if config.compile else model


def make_optimizer(
    model: torch.nn.Module, config: TrainConfig, world: World
) -> torch.optim.Optimizer:
    """AdamW, fused where torch has a fused kernel for the device; no decay on norms (1-D)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
    fused = world.device.type in ("cuda", "cpu")  # torch's fused AdamW kernels
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused)


def autocast_context(config: TrainConfig, world: World) -> Any:
    if config.dtype == "float32":
        return nullcontext()
    return torch.autocast(world.device.type, dtype=getattr(torch, config.dtype))


def model_identity(config: TrainConfig) -> dict[str, Any]:
    """What the run started from, for refusing to resume a different model's checkpoints."""
    if pretrained_source(config.model)[1]:  # hf:ORG/NAME: the hub keeps its files
        return {"model": config.model}
    if config.model:
        model = Path(config.model)
        files = [model / "config.json", *sorted(model.glob("*.safetensors"))]
        hashes = {file.name: checkpoint.sha256(file) for file in files if file.is_file()}
        return {"model": str(model.resolve()), "sha256": hashes}
    return {"model": None, "model_config": config.model_config}


def resume_from(
    out: Path, model: torch.nn.Module, optimizer: Any, world: World, meta: dict[str, Any]
) -> int:
    directory = checkpoint.latest(out)
    if directory is None:
        raise TrainingError(f"--resume: {out} holds no complete checkpoint")
    state = checkpoint.read_state(directory)
    saved = {k: v for k, v in state["config"].items() if k not in RESUMABLE_CHANGES}
    ours = {k: v for k, v in json.loads(json.dumps(meta["config"])).items()
            if k not in RESUMABLE_CHANGES}  # fmt: skip
    if saved != ours:
        changed = sorted(k for k in ours if saved.get(k) != ours[k])
        raise TrainingError(
            f"--resume: {directory} was made by another recipe (differs in {', '.join(changed)})"
        )
    if state["model"] != json.loads(json.dumps(meta["model"])):
        raise TrainingError(f"--resume: {directory} was made from another starting model")
    checkpoint.load(model, optimizer, world, directory)
    return int(state["step"])


def save_final(
    model: torch.nn.Module, tokenizer: Any, config: TrainConfig, world: World, out: Path
) -> Path:
    """The trained model as an HF checkpoint (bfloat16 safetensors + tokenizer) in <out>/final."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    final = out / "final"
    if world.main:
        staging = out / ".final.partial"
        shutil.rmtree(staging, ignore_errors=True)
        # transformers records the parameters' dtype in config.json; training is over, so the
        # model itself goes to bfloat16, as published checkpoints are.
        inner = unwrap(model).to(torch.bfloat16)
        state = {k: v.to(torch.bfloat16) for k, v in state.items()}
        inner.save_pretrained(staging, state_dict=state)
        tokenizer.save_pretrained(staging)
        source = Path(config.tokenizer or config.model)
        if (source / "tokenizer.model").is_file():
            shutil.copy2(source / "tokenizer.model", staging / "tokenizer.model")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    world.barrier()
    return final


def model_flops_per_token(model_config: Any, seq_len: int) -> float:
    """Training FLOPs per token: 6 per weight, plus attention's 12 * layers * width * context."""
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    ffn, vocab = model_config.intermediate_size, model_config.vocab_size
    kv = hidden * model_config.num_key_value_heads // model_config.num_attention_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn
    weights = layers * per_layer + vocab * hidden  # the output matrix; embedding lookups are free
    return 6 * weights + 12 * layers * hidden * seq_len


def mfu(flops_per_token: float, tokens_per_s: float, peak_tflops: float) -> float | None:
    """Model FLOPs utilisation against the device's peak (None when the peak is not given)."""
    if peak_tflops <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12)
