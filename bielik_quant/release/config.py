"""A release recipe: the whole road from data to a published release, as one frozen dataclass.

A recipe is YAML (`recipes/demo.yaml`, `recipes/bielik-7b.yaml`) read by the loader training
recipes use (`training.settings`): unknown keys are refused with a did-you-mean, values are parsed
by their field's type, and `KEY=VALUE` overrides (`export.n_ctx=256`) work the same way.

A stage that is absent (`pretrain: null`, or no `data:` key) is not run: a recipe that quantizes a
model trained elsewhere names it in `model` and has only export, eval, report and release.

`__post_init__` checks what can be checked from the recipe alone; `check_environment` then checks
what needs the machine (files that must exist, formats that must be installed). Both run before
any stage starts, so a recipe that cannot run fails in one line before any work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import settings
from training.settings import ConfigError

STAGES = ("data", "pretrain", "sft", "export", "eval", "report", "release")
DATA_STEPS = ("clean", "anonymize", "quality")
REPORT_FORMATS = ("md", "csv", "html")
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"  # in the source checkout


@dataclass(frozen=True)
class DataStage:
    """The pretraining data: sources through the pipeline's steps, in order."""

    # The built-in corpus ("pl-en", its `split`) or .txt/.jsonl/.parquet files or directories.
    sources: tuple[str, ...] = ("pl-en",)
    split: str = "train"  # split of the built-in corpus
    text_field: str = "text"
    steps: tuple[str, ...] = DATA_STEPS  # any of clean, anonymize, quality, in this order
    threshold: float = 0.9  # quality: keep documents with P(HIGH) above this
    quality_model: str = ""  # a `data train-quality` folder; "" trains one on our labelled set
    morphology: bool = True  # the quality features' morfeusz2 grammar shares
    num_proc: int = 1
    shard_size: int = 1000

    def __post_init__(self) -> None:
        if not self.sources:
            _refuse("data.sources names no source")
        unknown = [s for s in self.steps if s not in DATA_STEPS]
        if unknown:
            _refuse(f"data.steps: unknown step {unknown[0]!r}; steps: {', '.join(DATA_STEPS)}")
        if list(self.steps) != sorted(self.steps, key=DATA_STEPS.index):
            _refuse(f"data.steps must keep the order {', '.join(DATA_STEPS)}")
        if not 0 <= self.threshold < 1:
            _refuse(f"data.threshold must lie in [0, 1), got {self.threshold}")
        if self.num_proc < 1 or self.shard_size < 1:
            _refuse("data.num_proc and data.shard_size must be at least 1")


@dataclass(frozen=True)
class TrainStage:
    """A training run: a training recipe (name or YAML file) with its fields overridden."""

    recipe: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)  # any TrainConfig field but model/data
    # Pretraining from scratch: train a SentencePiece tokenizer of this size on the data stage's
    # output first (0: the training recipe names its tokenizer, or the model brings one).
    tokenizer_vocab: int = 0
    nproc_per_node: int = 1  # > 1: the run goes through `torchrun --nproc_per_node N -m training`

    def __post_init__(self) -> None:
        from training.config import recipe_path, typed

        if not self.recipe:
            _refuse("a training stage needs `recipe` (a name in training/recipes/ or a YAML file)")
        recipe_path(self.recipe)
        typed(self.overrides, source="the training stage's overrides")
        for owned in ("out", "model", "tokenizer"):
            if owned in self.overrides:
                _refuse(f"training overrides may not set {owned!r}: the release road sets it")
        if self.tokenizer_vocab and self.tokenizer_vocab < 300:
            _refuse(f"tokenizer_vocab must be 0 or at least 300, got {self.tokenizer_vocab}")
        if self.nproc_per_node < 1:
            _refuse(f"nproc_per_node must be at least 1, got {self.nproc_per_node}")


@dataclass(frozen=True)
class ExportItem:
    """One format and its variants; GGUF variants with `imatrix: false` are made without one."""

    format: str = ""
    variants: tuple[str, ...] = ()
    imatrix: bool | None = None  # GGUF only: true (the default) computes one from the calibration

    def __post_init__(self) -> None:
        if not self.format or not self.variants:
            _refuse("each export.formats entry needs `format` and `variants`")
        if self.imatrix is not None and self.format != "gguf":
            _refuse(f"export: imatrix is a GGUF setting; {self.format} takes none")

    @property
    def uses_imatrix(self) -> bool:
        return self.format == "gguf" and self.imatrix is not False

    @property
    def folder(self) -> str:
        """Where the stage writes this entry's artifacts, under the export directory."""
        without = self.format == "gguf" and not self.uses_imatrix
        return self.format + ("-noimatrix" if without else "")


@dataclass(frozen=True)
class ExportStage:
    formats: tuple[ExportItem, ...] = ()
    calibration: str = "pl-en"  # built-in corpus (its calib split) or a .txt/.jsonl/.parquet file
    n_ctx: int = 512  # calibration window in tokens
    samples: int = 128  # GPTQ, AWQ, EXL2: at most this many calibration windows
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.formats:
            _refuse("export.formats names no format")
        seen = set()
        for item in self.formats:
            for variant in item.variants:
                key = (item.folder, variant)
                if key in seen:
                    same = " with the same imatrix setting" if item.format == "gguf" else ""
                    _refuse(f"export: {item.format} {variant} is listed twice{same}")
                seen.add(key)
        if self.n_ctx < 8 or self.samples < 1:
            _refuse("export.n_ctx must be at least 8 and export.samples at least 1")


@dataclass(frozen=True)
class EvalStage:
    text: str = "pl-en"  # built-in corpus (its eval split), a .txt file, or .jsonl/.parquet
    n_ctx: int = 512
    chunks: int | None = None  # None: every complete window of the text

    def __post_init__(self) -> None:
        if self.n_ctx < 4 or (self.chunks is not None and self.chunks < 1):
            _refuse("eval.n_ctx must be at least 4 and eval.chunks at least 1")


@dataclass(frozen=True)
class ReportStage:
    formats: tuple[str, ...] = REPORT_FORMATS

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in REPORT_FORMATS]
        if unknown or not self.formats:
            _refuse(f"report.formats: choose from {', '.join(REPORT_FORMATS)}")


@dataclass(frozen=True)
class PublishStage:
    """The release folder: one folder per format, the index README, the report."""

    name: str = ""  # the release's name (folders are <name>-<FORMAT>); "" takes the recipe's
    license: str = ""  # the license the cards declare; "" takes the source model's card's


@dataclass(frozen=True)
class ReleaseConfig:
    # The release's name, and the name of the model the road trains (its artifacts are
    # <name>-<FORMAT>-<variant>); a given `model` without training keeps its folder's name.
    name: str = ""
    # An HF checkpoint directory: the starting point of pretrain (continued pretraining), else of
    # sft, else the model that is exported. "" when pretrain builds a model from scratch.
    model: str = ""
    data: DataStage | None = None
    pretrain: TrainStage | None = None
    sft: TrainStage | None = None
    export: ExportStage | None = None
    eval: EvalStage | None = None
    report: ReportStage | None = None
    release: PublishStage | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            _refuse(f"name must be letters, digits, '.', '_' or '-', got {self.name!r}")
        if self.export is None:
            _refuse("the recipe has no export stage: a release needs at least one format")
        if self.data is not None and self.pretrain is None:
            _refuse("the data stage feeds pretraining, but the recipe has no pretrain stage")
        if self.pretrain is None and self.sft is None and not self.model:
            _refuse("nothing to export: give `model`, or a pretrain or sft stage")
        if self.pretrain and not self.model and not self.pretrain.tokenizer_vocab:
            from training.config import load_config

            if not load_config(self.pretrain.recipe).tokenizer:
                _refuse("pretraining from scratch needs a tokenizer: set "
                        "pretrain.tokenizer_vocab or the training recipe's tokenizer")  # fmt: skip
        if self.pretrain and self.pretrain.tokenizer_vocab and self.data is None:
            _refuse("pretrain.tokenizer_vocab trains a tokenizer on the data stage's output, "
                    "but the recipe has no data stage")  # fmt: skip
        for later, needs in (("report", "eval"), ("release", "report")):
            if getattr(self, later) is not None and getattr(self, needs) is None:
                _refuse(f"the {later} stage needs an {needs} stage")
        if self.release and self.report and "csv" not in self.report.formats:
            _refuse("the release checks its report against the results by report.csv: keep "
                    "csv in report.formats")  # fmt: skip

    def stages(self) -> list[str]:
        """The stages this recipe runs, in road order."""
        return [name for name in STAGES if getattr(self, name) is not None]

    @property
    def release_name(self) -> str:
        return (self.release.name if self.release else "") or self.name


def _refuse(message: str) -> None:
    raise ConfigError(message)


def recipe_path(recipe: str | Path) -> Path:
    """A release recipe: a YAML path, or the name of one in the checkout's `recipes/`."""
    return settings.find_recipe(recipe, RECIPES_DIR, "release recipe")


def load_release(recipe: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ReleaseConfig:
    return settings.load(ReleaseConfig, recipe_path(recipe), overrides)


def check_environment(config: ReleaseConfig) -> None:
    """What the recipe needs from this machine: inputs that exist, formats that are installed."""
    from quantize.registry import get_format

    if config.model and not (Path(config.model) / "config.json").is_file():
        _refuse(f"model: {config.model} is not a Hugging Face checkpoint directory (no "
                "config.json)")  # fmt: skip
    if config.data:
        for source in config.data.sources:
            if source != "pl-en" and not Path(source).exists():
                _refuse(f"data.sources: {source} does not exist")
        if config.data.quality_model and not Path(config.data.quality_model).is_dir():
            _refuse(f"data.quality_model: {config.data.quality_model} is not a directory")
    assert config.export is not None
    for item in config.export.formats:
        fmt = get_format(item.format)  # an unknown format names the known ones
        known = set(fmt.variants())
        for variant in item.variants:
            if variant not in known:
                _refuse(f"export: unknown {item.format} variant {variant!r} "
                        f"(`bielik-quant info` lists them)")  # fmt: skip
            if not item.uses_imatrix and fmt.needs_imatrix(variant):
                _refuse(f"export: {item.format} {variant} needs an importance matrix; "
                        "remove `imatrix: false` for it")  # fmt: skip
        fmt.check()  # a format that is not installed names its extra
    for name, spec in (("export.calibration", config.export.calibration),
                       ("eval.text", config.eval.text if config.eval else "pl-en")):  # fmt: skip
        if spec != "pl-en" and not Path(spec).is_file():
            _refuse(f"{name}: {spec} is neither the built-in corpus (pl-en) nor a file")
