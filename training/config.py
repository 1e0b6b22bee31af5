"""One training configuration: a dataclass filled from a YAML recipe, then KEY=VALUE overrides.

Each field is defined once, here, with its type, default and meaning. The recipe files in
`training/recipes/` and the command line (`bielik-quant train RECIPE lr=1e-4 max_steps=20`) only
name fields; a name that is not a field is refused with the valid ones listed, and a value is
parsed by the field's type. So there is no second copy of the options in argparse to drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECIPES_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A recipe or an override names an unknown field or gives a value of the wrong type."""


@dataclass(frozen=True)
class TrainConfig:
    # What is trained, on what.
    task: str = "pretrain"  # "pretrain" (packed documents) or "sft" (masked conversations)
    model: str = ""  # an HF checkpoint directory to start from; "" builds `model_config` anew
    model_config: dict[str, Any] = field(default_factory=dict)  # MistralConfig fields, from scratch
    tokenizer: str = ""  # a tokenizer directory; "" takes the model's
    data: tuple[str, ...] = ("pl-en",)  # sources: built-in corpus name or .txt/.jsonl/.parquet
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


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def load_config(recipe: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A recipe (a name in training/recipes/ or a YAML path) with KEY=VALUE overrides applied."""
    import yaml

    path = recipe_path(recipe)
    try:
        values = yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of field: value")
    config = apply(TrainConfig(), values, source=str(path))
    return apply(config, parse_overrides(overrides), source="the command line")


def recipe_path(recipe: str | Path) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        return path
    named = RECIPES_DIR / f"{recipe}.yaml"
    if not named.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown recipe {str(recipe)!r}; built-in recipes: {known}")
    return named


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["lr=1e-4", "betas=[0.9, 0.99]"]` → {"lr": 1e-4, "betas": [0.9, 0.99]} (values as YAML)."""
    import yaml

    values = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        values[key.strip()] = yaml.safe_load(text) if text.strip() else ""
    return values


def apply(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """`config` with `values` replacing its fields, each checked against the field's type."""
    hints = typing.get_type_hints(TrainConfig)
    known = field_names()
    changes = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown field {key!r}{hint}; valid fields: {', '.join(known)}"
            )
        changes[key] = coerce(key, value, hints[key], source)
    return dataclasses.replace(config, **changes)


def coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """`value` as the field's type: YAML gives ints for floats and lists for tuples."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    wrong = ConfigError(f"{source}: {key} must be {_describe(hint)}, got {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        return float(value)
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise wrong
        return str(value)
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        args = typing.get_args(hint)
        item_types = [args[0]] * len(items) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(items):
            raise wrong
        return tuple(coerce(key, v, t, source) for v, t in zip(items, item_types, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong
        _, value_type = typing.get_args(hint)
        return {str(k): coerce(key, v, value_type, source) for k, v in value.items()}
    raise TypeError(f"field {key} has a type the config cannot parse: {hint}")  # our bug


def _describe(hint: Any) -> str:
    if isinstance(hint, type):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}[
            hint.__name__
        ]
    if typing.get_origin(hint) is tuple:
        return "a list"
    if typing.get_origin(hint) is dict:
        return "a mapping"
    return str(hint)
