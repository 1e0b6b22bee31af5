"""Importance matrices computed in torch, stored in llama.cpp's imatrix GGUF layout.

What `llama-imatrix` (tools/imatrix/imatrix.cpp) does, and what we reproduce:

* it runs the calibration text in `n_ctx`-token chunks (see `quantize.windows`) and, for every
  matrix multiplication whose weight is named `blk.*`, adds x² of every input row to a per-column
  sum and counts the rows. `output.weight` (the LM head) is only collected with `--process-output`,
  which is off by default, so we leave it out too; token embeddings are a row lookup, not a matmul.
* it saves, per weight `<name>`, a 2-D F32 tensor `<name>.in_sum2` of ggml shape [n_cols, 1] (the
  raw sums) and a 2-D F32 tensor `<name>.counts` of shape [1, 1] (the row count), sorted by name,
  plus the keys `general.type = "imatrix"`, `imatrix.datasets` (string array),
  `imatrix.chunk_count` and `imatrix.chunk_size` (u32). (The second dimension is the expert index
  in MoE models; our dense models always have one.)

`llama-quantize` (tools/quantize/quantize.cpp) turns each entry into the float array it hands to
the quantizer as `in_sum2 / count` in float32, the count being read back with `lround`; an entry
whose count is 0 becomes all ones. `ImportanceMatrix.values` does the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from quantize.errors import ImatrixError, ModelSourceError, QuantizeError
from quantize.gguf.reader import read_gguf
from quantize.gguf.tensor_names import gguf_tensor_name
from quantize.windows import token_windows, tokenize_for_windows

if TYPE_CHECKING:
    import torch

# Key and tensor names as llama.cpp spells them (common/imatrix-loader.h, imatrix.cpp).
KEY_DATASETS = gguf.Keys.IMatrix.DATASETS
KEY_CHUNK_COUNT = gguf.Keys.IMatrix.CHUNK_COUNT
KEY_CHUNK_SIZE = gguf.Keys.IMatrix.CHUNK_SIZE
SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"


@dataclass
class ImportanceMatrix:
    """Per-input-column sums of squared activations for every weight matrix, keyed by GGUF name."""

    sums: dict[str, np.ndarray]
    counts: dict[str, int]
    chunk_count: int
    chunk_size: int
    datasets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if set(self.sums) != set(self.counts):
            raise ImatrixError("importance matrix sums and counts name different tensors")

    def values(self) -> dict[str, np.ndarray]:
        """The per-column importances `llama-quantize` passes to the quantizer: mean x² per column.

        Division happens in float32 with the count as float32, as in quantize.cpp's `load_imatrix`
        (the count makes a round trip through an F32 tensor there, so we use that value too).
        """
        out = {}
        for name, sums in self.sums.items():
            count = np.float32(self.counts[name])
            if count > 0:
                out[name] = np.asarray(sums, dtype=np.float32) / count
            else:
                # llama.cpp's fallback for weights that saw no data: uniform importance.
                out[name] = np.ones_like(sums, dtype=np.float32)
        return out

    def sha256(self) -> str:
        """A digest of the content, independent of dict order, for manifests and caching."""
        digest = hashlib.sha256()
        header = {
            "chunk_count": self.chunk_count,
            "chunk_size": self.chunk_size,
            "datasets": self.datasets,
        }
        digest.update(json.dumps(header, sort_keys=True).encode())
        for name in sorted(self.sums):
            sums = np.ascontiguousarray(self.sums[name], dtype="<f4")
            digest.update(name.encode() + b"\0")
            # Lengths make the byte stream unambiguous between one entry and the next.
            digest.update(int(self.counts[name]).to_bytes(8, "little", signed=True))
            digest.update(sums.size.to_bytes(8, "little"))
            digest.update(sums.tobytes())
        return digest.hexdigest()


class _SquareSums:
    """Forward pre-hook that accumulates Σx² per input column over every row a Linear sees."""

    def __init__(self, width: int) -> None:
        import torch

        self.sums = torch.zeros(width, dtype=torch.float64)
        self.rows = 0

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach()
        # float64 so that millions of rows add up without the drift of a float32 running sum.
        rows = x.reshape(-1, x.shape[-1]).double()
        self.sums += rows.square().sum(dim=0)
        self.rows += rows.shape[0]


def compute_imatrix(
    model_dir: Path,
    texts: Sequence[str],
    *,
    n_ctx: int = 512,
    max_windows: int | None = None,
    on_window: Callable[[int, int], None] | None = None,
    dataset_name: str = "",
) -> ImportanceMatrix:
    """Run the calibration texts through the HF model and collect llama-imatrix's statistics.

    The model runs in float32 on CPU, one `n_ctx` window at a time; `on_window(done, total)` is
    called after each. `max_windows` caps the number of windows like llama-imatrix's `--chunks`.
    """
    if not any(text.strip() for text in texts):
        raise QuantizeError("no calibration text: every document is empty")
    if max_windows is not None and max_windows < 1:
        raise QuantizeError(f"max_windows must be at least 1, got {max_windows}")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelSourceError(f"{model_dir} is not a Hugging Face checkpoint: no config.json")

    # Heavy imports stay here so that loading and saving imatrix files does not need torch.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    windows = token_windows(
        tokenize_for_windows(tokenizer, texts), n_ctx, bos_id=tokenizer.bos_token_id
    )
    if max_windows is not None:
        windows = windows[:max_windows]

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    accumulators = _collected_linears(model)

    handles = [module.register_forward_pre_hook(acc) for module, acc in accumulators.values()]
    try:
        with torch.inference_mode():
            for done, window in enumerate(windows, start=1):
                model(input_ids=torch.tensor([window]), use_cache=False)
                if on_window is not None:
                    on_window(done, len(windows))
    finally:
        for handle in handles:
            handle.remove()

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for name, (_, acc) in sorted(accumulators.items()):
        if not torch.isfinite(acc.sums).all():
            # llama-imatrix aborts on non-finite sums too: such a matrix would poison quantization.
            raise QuantizeError(f"non-finite activations reached {name}; the model is broken")
        sums[name] = acc.sums.to(torch.float32).numpy()
        counts[name] = acc.rows
    return ImportanceMatrix(
        sums=sums,
        counts=counts,
        chunk_count=len(windows),
        chunk_size=n_ctx,
        datasets=[dataset_name] if dataset_name else [],
    )


def _collected_linears(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, _SquareSums]]:
    """GGUF name → (Linear, accumulator) for the matrices llama-imatrix collects by default."""
    import torch

    n_blocks = model.config.num_hidden_layers
    found = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        name = gguf_tensor_name(f"{module_name}.weight", n_blocks)
        # The same rule as imatrix.cpp: only `blk.*` weights (so not output.weight by default).
        if name.startswith("blk."):
            found[name] = (module, _SquareSums(module.in_features))
    return found


def save_imatrix(matrix: ImportanceMatrix, path: Path) -> None:
    """Write `matrix` in llama-imatrix's GGUF layout, atomically (a partial file, then rename)."""
    path = Path(path)
    partial = path.with_suffix(path.suffix + ".partial")
    # An empty architecture string is skipped by GGUFWriter: llama-imatrix files have none.
    writer = gguf.GGUFWriter(partial, arch="")
    try:
        writer.add_type(gguf.GGUFType.IMATRIX)
        # llama-quantize refuses a GGUF imatrix without this key, and GGUFWriter cannot write an
        # empty array, so "no dataset" is stored as one empty name (dropped again on load).
        writer.add_array(KEY_DATASETS, matrix.datasets or [""])
        writer.add_uint32(KEY_CHUNK_COUNT, matrix.chunk_count)
        writer.add_uint32(KEY_CHUNK_SIZE, matrix.chunk_size)
        for name in sorted(matrix.sums):
            # numpy shape (1, n_cols) is ggml [n_cols, 1]; (1, 1) is [1, 1]: llama.cpp's shapes.
            sums = np.asarray(matrix.sums[name], dtype=np.float32).reshape(1, -1)
            count = np.full((1, 1), matrix.counts[name], dtype=np.float32)
            writer.add_tensor(name + SUMS_SUFFIX, sums)
            writer.add_tensor(name + COUNTS_SUFFIX, count)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise


def load_imatrix(path: Path) -> ImportanceMatrix:
    """Read an imatrix GGUF written by `save_imatrix` or by llama.cpp's `llama-imatrix`."""
    path = Path(path)
    if not path.is_file():
        raise ImatrixError(f"importance matrix {path} does not exist")
    reader = read_gguf(path, ImatrixError, padded=True)

    kind = _field(reader, gguf.Keys.General.TYPE)
    if kind != gguf.GGUFType.IMATRIX:
        raise ImatrixError(f"{path} is a GGUF file but not an importance matrix (type {kind!r})")
    datasets = _field(reader, KEY_DATASETS)
    chunk_count = _field(reader, KEY_CHUNK_COUNT)
    chunk_size = _field(reader, KEY_CHUNK_SIZE)
    if datasets is None or chunk_count is None or chunk_size is None:
        # llama-quantize rejects such a file ("missing imatrix metadata"), so we do too.
        raise ImatrixError(f"{path} lacks the imatrix.datasets/chunk_count/chunk_size metadata")

    tensors = {t.name: t for t in reader.tensors}
    names = sorted(n.removesuffix(SUMS_SUFFIX) for n in tensors if n.endswith(SUMS_SUFFIX))
    if not names:
        raise ImatrixError(f"{path} holds no importance matrix entries")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for name in names:
        sum_t = tensors[name + SUMS_SUFFIX]
        count_t = tensors.get(name + COUNTS_SUFFIX)
        if count_t is None:
            raise ImatrixError(f"{path}: entry {name} has sums but no counts")
        f32 = gguf.GGMLQuantizationType.F32
        if sum_t.tensor_type != f32 or count_t.tensor_type != f32:
            raise ImatrixError(f"{path}: entry {name} is not stored as F32")
        if count_t.n_elements != 1:
            raise ImatrixError(
                f"{path}: entry {name} has {count_t.n_elements} per-expert counts; "
                "only dense (non-MoE) models are supported"
            )
        # Copy out of the memory map so nothing keeps the file open.
        sums[name] = np.array(sum_t.data, dtype=np.float32).reshape(-1)
        counts[name] = round(float(count_t.data.reshape(-1)[0]))
    counted = {n.removesuffix(COUNTS_SUFFIX) for n in tensors if n.endswith(COUNTS_SUFFIX)}
    if orphans := sorted(counted - set(sums)):
        raise ImatrixError(f"{path}: entry {orphans[0]} has counts but no sums")
    return ImportanceMatrix(
        sums=sums,
        counts=counts,
        chunk_count=int(chunk_count),
        chunk_size=int(chunk_size),
        datasets=[d for d in ([datasets] if isinstance(datasets, str) else datasets) if d],
    )


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    found = reader.get_field(key)
    return None if found is None else found.contents()
