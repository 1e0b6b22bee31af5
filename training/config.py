"""One training configuration: a dataclass filled from a YAML recipe, then KEY=VALUE overrides.

Each field is defined once, here, with its type, default and meaning. The recipe files in
`training/recipes/` and the command line (`bielik-quant train RECIPE lr=1e-4 max_steps=20`) only
name fields; a name that is not a field is refused with the valid ones listed, and a value is
parsed by the field's type. So there is no second copy of the options in argparse to drift apart.

Every value is checked once, in `TrainConfig.__post_init__`, against what the trainer can run
(known task, dtype and parallelism, positive counts, lr >= min_lr >= 0, existing data files), so a
recipe that cannot run fails while it is loaded, with one line, before any process starts work.

`model` and `tokenizer` are local directories unless written `hf:ORG/NAME`: only then may
transformers download from the Hugging Face hub. A mistyped path is an error naming it, never a
download of whatever hub repository happens to have that name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration_data import BUILTIN
from calibration_data.manifest import CORPUS_SPLITS
from training import settings
from training.settings import ConfigError, parse_overrides  # noqa: F401 (tests import them here)

RECIPES_DIR = Path(__file__).parent / "recipes"
TASKS = ("pretrain", "sft")
DTYPES = ("float32", "bfloat16", "float16")
PARALLEL = ("none", "ddp", "fsdp")
HUB = "hf:"  # model=hf:ORG/NAME: from the Hugging Face hub; anything else is a local directory
SFT_BUILTIN = "sft"  # our corpus's SFT conversations


@dataclass(frozen=True)
class TrainConfig:
    # What is trained, on what.
    task: str = "pretrain"  # "pretrain" (packed documents) or "sft" (masked conversations)
    # An HF checkpoint directory to start from, or hf:ORG/NAME to download it from the hub;
    # "" builds `model_config` anew.
    model: str = ""
    model_config: dict[str, Any] = field(default_factory=dict)  # MistralConfig fields, from scratch
    tokenizer: str = ""  # a tokenizer directory (or hf:ORG/NAME); "" takes the model's
    # Sources. pretrain: the built-in corpus "pl-en", .txt/.jsonl/.parquet files or directories of
    # them; sft: "sft" (our conversations) or .jsonl files of {"messages": [...]} records.
    data: tuple[str, ...] = ("pl-en",)
    data_weights: tuple[float, ...] = ()  # mixing ratio per source (pretrain); () is equal shares
    data_split: str = "train"  # split of the built-in corpus
    seq_len: int = 4096  # tokens per block (pretrain) or the longest sample (SFT)
    quality_weights: dict[str, float] = field(
        default_factory=lambda: {"high": 1.0, "medium": 0.7, "low": 0.5}
    )  # SFT: each sample's loss is multiplied by the weight of its quality label
    # Batch: global batch = micro_batch * grad_accum * world size (in sequences).
    micro_batch: int = 4
    global_batch: int = 256
    epochs: int = 0  # > 0: train this many passes over the data (SFT); max_steps is then derived
    max_steps: int = 1000
    # Optimiser and schedule: AdamW, cosine decay from `lr` to `min_lr` after linear warmup.
    lr: float = 3e-5
    min_lr: float = 2e-5
    warmup_steps: int = 2000
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: float = 1.0
    # Adaptive LR: lr * sqrt(loss tokens in the step / alr_baseline_tokens); 0 turns it off.
    alr_baseline_tokens: int = 0
    # Precision and speed.
    dtype: str = "bfloat16"  # autocast dtype where the device supports it, else float32
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False  # recompute block activations in backward: memory for time
    parallel: str = "none"  # "none", "ddp" or "fsdp" (FSDP2 fully_shard); under torchrun
    peak_tflops: float = 0.0  # the device's dense bf16 peak, for MFU (H100 SXM: 989); 0: unknown
    seed: int = 0
    # Output.
    out: str = "runs/train"
    log_every: int = 10
    save_every: int = 500  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        """Refuse values the trainer cannot run, naming the field and what it accepts."""
        for name, allowed in (("task", TASKS), ("dtype", DTYPES), ("parallel", PARALLEL),
                              ("data_split", CORPUS_SPLITS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                _refuse(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("seq_len", "micro_batch", "global_batch", "max_steps", "log_every",
                     "save_every", "keep_checkpoints"):  # fmt: skip
            if getattr(self, name) < 1:
                _refuse(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("epochs", "warmup_steps", "alr_baseline_tokens", "seed"):
            if getattr(self, name) < 0:
                _refuse(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.global_batch % self.micro_batch:
            _refuse(f"global_batch {self.global_batch} is not a multiple of micro_batch "
                    f"{self.micro_batch}")  # fmt: skip
        # Written so that NaN fails too: every comparison with NaN is false.
        if not (self.lr > 0 and self.lr >= self.min_lr >= 0):
            _refuse(f"lr and min_lr must satisfy lr > 0 and lr >= min_lr >= 0, "
                    f"got lr={self.lr}, min_lr={self.min_lr}")  # fmt: skip
        if not all(0 <= beta < 1 for beta in self.betas):
            _refuse(f"betas must each lie in [0, 1), got {list(self.betas)}")
        for name, low in (("eps", 0.0), ("clip_grad", 0.0)):
            if not getattr(self, name) > low:
                _refuse(f"{name} must be above {low:g}, got {getattr(self, name)}")
        for name in ("weight_decay", "peak_tflops"):
            if not getattr(self, name) >= 0:
                _refuse(f"{name} must be 0 or more, got {getattr(self, name)}")
        for label, weight in self.quality_weights.items():
            if not 0 < weight <= 1:
                _refuse(f"quality_weights: {label}'s weight {weight} is not in (0, 1]")
        for name in ("model", "tokenizer"):
            _check_pretrained(name, getattr(self, name))
        self._check_data()

    def _check_data(self) -> None:
        if not self.data:
            _refuse("data names no source")
        builtin = SFT_BUILTIN if self.task == "sft" else BUILTIN
        for source in self.data:
            path = Path(source)
            found = path.is_file() if self.task == "sft" else path.exists()
            if source != builtin and not found:
                kind = "a .jsonl file" if self.task == "sft" else "a file or directory"
                _refuse(f"data: {source} is neither the built-in {self.task} set ({builtin}) "
                        f"nor {kind} that exists")  # fmt: skip
        if self.data_weights and len(self.data_weights) != len(self.data):
            _refuse(f"data_weights has {len(self.data_weights)} values for {len(self.data)} "
                    "sources")  # fmt: skip
        if not all(weight > 0 for weight in self.data_weights):
            _refuse(f"data_weights must be positive, got {list(self.data_weights)}")


def _refuse(message: str) -> None:
    raise ConfigError(message)


def _check_pretrained(name: str, value: str) -> None:
    """`model`/`tokenizer`: "", hf:ORG/NAME, or a directory that exists."""
    if value.startswith(HUB):
        if not value[len(HUB) :].strip("/"):
            _refuse(f"{name}: {value!r} names no Hugging Face hub repository (hf:ORG/NAME)")
    elif value and not Path(value).is_dir():
        _refuse(f"{name}: {value} is not a local directory (to download from the Hugging Face "
                f"hub, write {name}=hf:ORG/NAME)")  # fmt: skip


def pretrained_source(value: str) -> tuple[str, bool]:
    """What from_pretrained takes for a `model`/`tokenizer` value, and whether it may download."""
    if value.startswith(HUB):
        return value[len(HUB) :], True
    return value, False


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def load_config(recipe: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A recipe (a name in training/recipes/ or a YAML path) with KEY=VALUE overrides applied.

    Recipe and overrides are checked together, once (`training.settings`, the loader release
    recipes share).
    """
    return settings.load(TrainConfig, recipe_path(recipe), overrides)


def build_config(recipe: str | Path, changes: dict[str, Any]) -> TrainConfig:
    """A recipe with fields replaced by `changes` (a mapping, as a release recipe holds them)."""
    values = typed(settings.read_yaml(recipe_path(recipe)), source=str(recipe_path(recipe)))
    return settings.construct(TrainConfig, settings.merge(values, typed(changes, "the overrides")))


def recipe_path(recipe: str | Path) -> Path:
    return settings.find_recipe(recipe, RECIPES_DIR, "recipe")


def typed(values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` for TrainConfig's fields, each parsed by the field's type; unknown names refused."""
    return settings.typed(TrainConfig, values, source)
