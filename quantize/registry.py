"""The format registry: one name → one exporter object, built in or from an installed plugin.

The CLI, the recipes and the evaluation suite speak only this contract, so adding a format is one
module plus one registry line (or a `bielik_quant.formats` entry point in another package).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from quantize.errors import UnknownFormatError, UnknownVariantError

if TYPE_CHECKING:
    from calibration_data import Calibration
    from quantize.artifact import Artifact
    from quantize.source import ModelSource

ENTRY_POINT_GROUP = "bielik_quant.formats"
# Built-in formats as "module:attribute", imported only when asked for, so a missing backend
# library never breaks the others.
BUILTIN = {
    "gguf": "quantize.gguf.format:GGUF",
    "awq": "quantize.gptqmodel.format:AWQ",
    "gptq": "quantize.gptqmodel.format:GPTQ",
    "hqq": "quantize.hqq.format:HQQ",
    "mlx": "quantize.mlx.format:MLX",
    "exl2": "quantize.exl2.format:EXL2",
}

# (what is being done, done, total): the CLI draws a progress bar from these calls.
Progress = Callable[[str, int, int], None]


def stage(progress: Progress | None, description: str) -> Callable[[int, int], None] | None:
    """A `(done, total)` callback for one stage of the work, or None when nobody listens."""
    if progress is None:
        return None
    return lambda done, total: progress(description, done, total)


@dataclass(frozen=True)
class ExportRequest:
    """What `bielik-quant export` asks of a format; fields a format does not use are ignored."""

    source: ModelSource
    out_root: Path
    variants: tuple[str, ...]
    calibration: Calibration | None = None
    overwrite: bool = False
    threads: int = 0
    n_ctx: int = 512  # calibration window length in tokens (imatrix, GPTQ/AWQ, EXL2)
    calibration_samples: int = 128  # GPTQ/AWQ/EXL2: at most this many windows of the text
    imatrix: str | Path | None = "auto"  # GGUF: "auto", a file, or None for no imatrix
    tensor_types: tuple[str, ...] = ()  # GGUF: REGEX=TYPE overrides


class Runner(Protocol):
    """A loaded model as the evaluation suite and `run` use it, whatever the format."""

    @property
    def vocab_size(self) -> int:
        """Width of the logits."""
        ...

    @property
    def bos_token_id(self) -> int | None:
        """The token that starts every evaluation window (None: the model uses none)."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, with BOS when the model's tokenizer adds one."""
        ...

    def token_bytes(self) -> np.ndarray:
        """(vocab,) UTF-8 bytes each token stands for, 0 for control tokens (bits per byte)."""
        ...

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """(len(tokens), vocab) float32 logits for one sequence."""
        ...

    def generate(self, prompt: str, max_tokens: int) -> str: ...


class Format(Protocol):
    name: str
    extra: str  # the pip extra that installs this format's library

    def variants(self) -> Sequence[str]: ...

    def needs_imatrix(self, variant: str) -> bool:
        """Whether this variant cannot be made without an importance matrix."""
        ...

    def missing(self) -> list[str]:
        """What this machine lacks to export this format (empty when ready)."""
        ...

    def check(self) -> None:
        """Raise MissingDependencyError naming what to install, if anything is missing."""
        ...

    def export(
        self, request: ExportRequest, progress: Progress | None = None
    ) -> list[Artifact]: ...

    def open(self, artifact: Path, n_ctx: int = 4096) -> Runner:
        """Load an artifact for sequences of up to `n_ctx` tokens."""
        ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


V = TypeVar("V", bound=_Named)


def find_variant(format_name: str, variants: Sequence[V], name: str) -> V:
    """The variant called `name`, or UnknownVariantError listing the valid ones."""
    for variant in variants:
        if variant.name == name:
            return variant
    valid = ", ".join(v.name for v in variants)
    raise UnknownVariantError(f"unknown {format_name} variant {name!r}; valid: {valid}")


def format_names() -> list[str]:
    names = dict.fromkeys(BUILTIN)
    names.update(dict.fromkeys(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)))
    return list(names)


def get_format(name: str) -> Format:
    if name in BUILTIN:
        module, attribute = BUILTIN[name].split(":")
        return getattr(import_module(module), attribute)()
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
        return entry_point.load()()
    raise UnknownFormatError(f"unknown format {name!r}; available: {', '.join(format_names())}")
