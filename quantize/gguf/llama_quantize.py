"""llama.cpp's own quantizer, called in-process through llama-cpp-python.

The quant mixes (which tensor gets which type in Q4_K_M, IQ2_XXS, ...) are llama.cpp's: we pass
the file type, the importance matrix and per-tensor overrides to `llama_model_quantize` and never
re-implement them.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from quantize.errors import ImatrixError, QuantizeError, UnknownVariantError

# The file types llama.cpp's `llama-quantize` offers, by the names it uses, and F32 ("ALL_F32").
FTYPE_NAMES = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
    "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_S", "IQ3_XS",
    "IQ3_XXS", "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S",
    "TQ2_0", "TQ1_0",
)  # fmt: skip

# llama.cpp's rule (src/llama-quant.cpp, tensor_requires_imatrix): these target types need an
# importance matrix for every tensor except the token embeddings and the output matrix, and so does
# Q2_K inside a Q2_K_S file. Which file types end up using them is decided by llama.cpp's mixes
# (IQ3_XS puts IQ3_XXS on some tensors). This table lets an export refuse before hours of work;
# llama.cpp still has the last word at quantization time, and a test checks the table against
# llama.cpp's own dry run for every file type.
IMATRIX_TYPES = frozenset({"IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"})
FTYPES_REQUIRING_IMATRIX = frozenset({"IQ3_XS", "IQ3_XXS", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS",
                                      "IQ2_XXS", "IQ1_M", "IQ1_S"})  # fmt: skip


def ftype(name: str) -> int:
    """llama.cpp's `llama_ftype` for a variant name such as `Q4_K_M`."""
    import llama_cpp

    if name not in FTYPE_NAMES:
        raise UnknownVariantError(f"unknown GGUF variant {name!r}; valid: {', '.join(FTYPE_NAMES)}")
    return getattr(
        llama_cpp, "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"
    )


@dataclass(frozen=True)
class TensorTypeOverride:
    """`--tensor-type REGEX=TYPE`: tensors whose GGUF name matches REGEX get the ggml TYPE."""

    pattern: str
    type_name: str

    @classmethod
    def parse(cls, text: str) -> TensorTypeOverride:
        pattern, sep, type_name = text.rpartition("=")
        if not sep or not pattern:
            raise QuantizeError(
                f"--tensor-type {text!r} must look like REGEX=TYPE, e.g. ffn_down=Q6_K"
            )
        type_name = type_name.upper()
        if type_name not in gguf.GGMLQuantizationType.__members__:
            valid = ", ".join(gguf.GGMLQuantizationType.__members__)
            raise QuantizeError(
                f"--tensor-type {text!r}: unknown ggml type {type_name!r}; valid: {valid}"
            )
        try:
            re.compile(pattern)
        except re.error as err:
            raise QuantizeError(f"--tensor-type {text!r}: bad regular expression ({err})") from err
        return cls(pattern, type_name)

    def __str__(self) -> str:
        return f"{self.pattern}={self.type_name}"


def requires_imatrix(variant: str, overrides: Sequence[TensorTypeOverride] = ()) -> bool:
    """Whether llama.cpp refuses `variant` (with these overrides) without an importance matrix."""
    return variant in FTYPES_REQUIRING_IMATRIX or any(
        o.type_name in IMATRIX_TYPES for o in overrides
    )


def quantize_gguf(
    source: Path,
    dest: Path,
    variant: str,
    *,
    imatrix: Mapping[str, np.ndarray] | None = None,
    overrides: Sequence[TensorTypeOverride] = (),
    threads: int = 0,
    dry_run: bool = False,
    metadata: Mapping[str, str | int] | None = None,
    on_tensor: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Quantize the F16/BF16/F32 GGUF `source` into `dest`; return llama.cpp's log lines.

    `imatrix` maps GGUF tensor names to per-column importances (`ImportanceMatrix.values()`).
    `metadata` adds or replaces keys in `dest` (strings, or integers that llama.cpp stores as
    u32), e.g. `imatrix_metadata`'s. `on_tensor(done, total)` follows llama.cpp's per-tensor log.
    """
    import llama_cpp

    if requires_imatrix(variant, overrides) and not imatrix and not dry_run:
        raise ImatrixError(
            f"{variant} needs an importance matrix: pass --imatrix auto (computed from the "
            "calibration text) or --imatrix FILE (from `bielik-quant imatrix`)"
        )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype(variant)
    params.nthread = threads
    params.dry_run = dry_run
    keep_alive: list[object] = []  # ctypes buffers must outlive the call
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            array = np.ascontiguousarray(values, dtype=np.float32)
            keep_alive.append(array)
            entries[i].name = name.encode()
            entries[i].data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = array.size
        entries[len(imatrix)].name = None  # the list ends at a NULL name
        keep_alive.append(entries)
        params.imatrix = ctypes.cast(entries, type(params.imatrix))
    if overrides:
        table = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, override in enumerate(overrides):
            table[i].pattern = override.pattern.encode()
            table[i].type = int(gguf.GGMLQuantizationType[override.type_name])
        table[len(overrides)].pattern = None
        keep_alive.append(table)
        params.tt_overrides = ctypes.cast(table, type(params.tt_overrides))
    if metadata:
        kv = _kv_overrides(metadata)
        keep_alive.append(kv)
        params.kv_overrides = ctypes.cast(kv, type(params.kv_overrides))

    with LlamaLog(on_tensor) as log:
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(dest).encode(), ctypes.byref(params)
        )
    if status != 0:
        reason = next((line for line in log.lines if "ERROR" in line or "error" in line), "")
        if "requires an importance matrix" in "\n".join(log.lines):
            raise ImatrixError(f"llama.cpp: {variant} needs an importance matrix (--imatrix auto)")
        raise QuantizeError(f"llama.cpp could not quantize to {variant} (status {status}) {reason}")
    return log.lines


# The keys llama-quantize (tools/quantize/quantize.cpp) writes into a file it quantized with an
# imatrix; gguf-py has no constants for them.
KEY_IMATRIX_FILE = "quantize.imatrix.file"
KEY_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_IMATRIX_N_ENTRIES = "quantize.imatrix.entries_count"
KEY_IMATRIX_N_CHUNKS = "quantize.imatrix.chunks_count"
# llama_model_kv_override holds keys and string values in char[128], NUL included.
_KV_TEXT_BYTES = 127


def imatrix_metadata(
    file_name: str, datasets: Sequence[str], n_entries: int, n_chunks: int
) -> dict[str, str | int]:
    """What llama-quantize records about the imatrix it used, with the same meanings.

    `file_name` names the imatrix file, `n_entries` counts the tensors it gives importances for,
    `n_chunks` the calibration windows it was computed on. As llama-quantize does, only the first
    dataset is recorded, and the chunk count only when it is known (above zero).
    """
    keys: dict[str, str | int] = {KEY_IMATRIX_FILE: file_name}
    if datasets:
        keys[KEY_IMATRIX_DATASET] = datasets[0]
    keys[KEY_IMATRIX_N_ENTRIES] = n_entries
    if n_chunks > 0:
        keys[KEY_IMATRIX_N_CHUNKS] = n_chunks
    return keys


def _kv_overrides(metadata: Mapping[str, str | int]) -> ctypes.Array:
    """llama.cpp's kv-override array for `metadata`, ended by an entry with an empty key."""
    import llama_cpp

    table = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()
    for entry, (key, value) in zip(table, metadata.items(), strict=False):
        if len(key.encode()) > _KV_TEXT_BYTES:
            raise QuantizeError(f"metadata key {key!r} is longer than llama.cpp's 127 bytes")
        entry.key = key.encode()
        if isinstance(value, str):
            # llama-quantize cuts long strings to the field too; cut on a UTF-8 boundary.
            text = value.encode()[:_KV_TEXT_BYTES].decode("utf-8", "ignore").encode()
            entry.tag, entry.value.val_str = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, text
        elif isinstance(value, int) and not isinstance(value, bool):
            entry.tag, entry.value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, value
        else:
            raise TypeError(f"metadata {key!r}: only str and int values are written, not {value!r}")
    table[len(metadata)].key = b""
    return table


_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


class LlamaLog:
    """Routes llama.cpp's log into a list (quantizing or loading), with per-tensor progress."""

    def __init__(self, on_tensor: Callable[[int, int], None] | None = None) -> None:
        self.on_tensor = on_tensor
        self.lines: list[str] = []
        self._partial = ""

    def __enter__(self) -> LlamaLog:
        import llama_cpp

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            self._partial += text.decode("utf-8", "replace")
            *complete, self._partial = self._partial.split("\n")
            for line in complete:
                self.lines.append(line)
                match = _TENSOR_LINE.search(line)
                if match and self.on_tensor:
                    self.on_tensor(int(match[1]), int(match[2]))

        self._callback = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: object) -> None:
        import llama_cpp

        # Back to llama-cpp-python's own logger (silent unless a model is loaded verbose).
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))
