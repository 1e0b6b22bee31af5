"""Brute-force dequantization of stored artifacts, in NumPy, from each format's documented layout.

The tests use it to check what an exporter stored against the weights it was given, and what a
runner computes against a plain forward pass of those dequantized weights. Nothing here calls the
format's own library: codes, scales and zeros are read from the files and put together with the
format's formula, so a check that passes says the library, our exporter and our runner agree with
the format as written down, not merely with each other.

Every format here stores a matrix as codes q in [0, 2^bits - 1] on an affine grid per group of
input columns, w = step * q + offset; `Grid` holds that, element-wise, for one matrix.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Half an ulp, relative, of the dtypes scales and zeros are stored in.
UNIT_ROUNDOFF = {"bfloat16": 2.0**-9, "float16": 2.0**-11, "float32": 2.0**-24}

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U32": np.uint32, "BOOL": np.bool_,
}  # fmt: skip


# The tiny model's matrix products in sequence (7 per decoder block, then lm_head) and the
# widest sum among them (the FFN): what the float32 rounding of a forward pass grows with.
PRODUCTS, WIDTH = 4 * 7 + 1, 768


def safetensors_header(path: Path) -> dict[str, dict]:
    """A .safetensors file's header: per tensor its dtype, shape and data offsets."""
    with Path(path).open("rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        header = json.loads(stream.read(length))
    header.pop("__metadata__", None)
    return header


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file (8-byte header length, JSON header, raw data).

    bfloat16 is the top half of a float32, so it is widened exactly by a 16-bit shift.
    """
    data = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, info in safetensors_header(path).items():
        start, end = info["data_offsets"]
        raw = np.frombuffer(body[start:end], dtype=np.uint8)
        if info["dtype"] == "BF16":
            array = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = raw.view(np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<"))
        tensors[name] = array.reshape(info["shape"])
    return tensors


def read_checkpoint(model_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of a Hugging Face checkpoint directory (one or several safetensors files)."""
    tensors: dict[str, np.ndarray] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(read_safetensors(file))
    return tensors


def unpack_bits(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Codes stored as one little-endian bit stream along the last axis, `bits` each.

    Value j of a row occupies bits [j*bits, (j+1)*bits) of the row's words read as one
    little-endian integer: how MLX packs every width (3, 5 and 6 bits straddling bytes) and how
    GPTQ packs its codes and zeros (3 bits straddling 32-bit words).
    """
    raw = np.ascontiguousarray(words).astype("<u4", copy=False).view(np.uint8)
    stream = np.unpackbits(raw, axis=-1, bitorder="little")[..., : count * bits]
    stream = stream.reshape(*words.shape[:-1], count, bits).astype(np.int64)
    return (stream << np.arange(bits)).sum(axis=-1)


@dataclass(frozen=True)
class Grid:
    """One quantized matrix, element-wise: w_hat = step * code + offset, codes in [0, levels]."""

    code: np.ndarray  # integer codes, the matrix's shape
    step: np.ndarray  # float64, the group's scale for each element
    offset: np.ndarray  # float64, the group's offset for each element
    levels: int  # 2^bits - 1, the largest code
    storage: str  # the dtype scales and offsets were stored in

    @property
    def weight(self) -> np.ndarray:
        return self.step * self.code + self.offset

    def storage_slack(self) -> np.ndarray:
        """How far w_hat may sit from the grid the quantizer rounded to, having been stored.

        The quantizer picks codes with its scale and offset, then stores them rounded to
        `storage`: each of step and offset moves by at most UNIT_ROUNDOFF relative, so w_hat
        moves by at most u * (|step| * code + |offset|). A further u of |w_hat| covers the
        quantizer's own arithmetic ((w - offset) / step in float32 or float16).
        """
        u = UNIT_ROUNDOFF[self.storage]
        return u * (np.abs(self.step) * self.code + np.abs(self.offset) + np.abs(self.weight))


def rounding_violations(grid: Grid, original: np.ndarray) -> dict[str, float]:
    """How far the stored codes are from round-to-nearest of `original` on the stored grid.

    Round-to-nearest with clipping gives every code strictly inside [0, levels] an error of at
    most half a step; a code at an end may also stand for a weight beyond it (clipped). Returns
    the worst excess over that bound, in steps, for interior codes and for codes at the ends
    whose weight lies on the grid's side; 0 means the codes are exactly round-to-nearest.
    """
    error = np.abs(original.astype(np.float64) - grid.weight)
    bound = np.abs(grid.step) / 2 + grid.storage_slack()
    excess = np.maximum(error - bound, 0) / np.abs(grid.step)
    interior = (grid.code > 0) & (grid.code < grid.levels)
    # Where a weight lies past an end of the grid the end code is the nearest: no bound applies.
    position = (original - grid.offset) / grid.step
    inside = (position >= 0) & (position <= grid.levels)
    return {
        "interior": float(excess[interior].max(initial=0)),
        "ends_inside": float(excess[~interior & inside].max(initial=0)),
    }


def group_range_bound(grid: Grid, original: np.ndarray, group_size: int) -> np.ndarray:
    """Per group, the largest |w - w_hat| in units of (max - min) / levels.

    That unit is the step of the grid spanning the group exactly, on which round-to-nearest errs
    by at most half of it; a quantizer that moves its grid (to make an end exact, say) may clip
    and err by more, which is what the caller bounds.
    """
    rows, columns = original.shape
    w = original.astype(np.float64).reshape(rows, columns // group_size, group_size)
    error = np.abs(w - grid.weight.reshape(w.shape)).max(axis=-1)
    span = (w.max(axis=-1) - w.min(axis=-1)) / grid.levels
    return error / np.where(span > 0, span, np.inf)


# MLX: mlx.core.quantize's affine mode, as mlx_lm.convert stores it.


def mlx_grids(artifact: Path) -> dict[str, Grid]:
    """Every quantized matrix of an MLX artifact, by module name ("model.layers.0.mlp.up_proj").

    Per matrix: `weight` uint32 (rows, columns * bits / 32), the codes as one bit stream per row;
    `scales` and `biases` (rows, columns / group_size) in the model's dtype; w = scale * q + bias.
    Bits and group size are config.json's `quantization`, overridden per module by mixed recipes.
    """
    config = json.loads((artifact / "config.json").read_text("utf-8"))["quantization"]
    tensors = read_checkpoint(artifact)
    storage = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    dtypes = {
        name: info["dtype"]
        for file in sorted(artifact.glob("*.safetensors"))
        for name, info in safetensors_header(file).items()
    }
    grids = {}
    for name in tensors:
        if not name.endswith(".scales"):
            continue
        module = name.removesuffix(".scales")
        settings = config.get(module) if isinstance(config.get(module), dict) else config
        bits, group = int(settings["bits"]), int(settings["group_size"])
        packed = tensors[f"{module}.weight"]
        columns = packed.shape[-1] * 32 // bits
        code = unpack_bits(packed, bits, columns)
        scales = np.repeat(tensors[name].astype(np.float64), group, axis=-1)
        biases = np.repeat(tensors[f"{module}.biases"].astype(np.float64), group, axis=-1)
        grids[module] = Grid(code, scales, biases, 2**bits - 1, storage[dtypes[name]])
    return grids


# HQQ: hqq's HQQLinear state as saved by save_quantized (qmodel.pt).

# hqq's BitPack: the rows of the (groups, group_size) code matrix are cut into `slices` equal
# parts; part j sits at bit shift (slices - 1 - j) * bits of the packed row (3-bit: ten per int32,
# rows padded to a multiple of ten).
_HQQ_PACKING = {"8bit_u8": (8, 1), "4bit_u8": (4, 2), "3bit_32": (3, 10), "2bit_u8": (2, 4),
                "1bit_u8": (1, 8)}  # fmt: skip


def hqq_unpack(packed: np.ndarray, packing: str, rows: int) -> np.ndarray:
    bits, slices = _HQQ_PACKING[packing]
    words = packed.astype(np.int64)
    parts = [(words >> ((slices - 1 - j) * bits)) & (2**bits - 1) for j in range(slices)]
    return np.concatenate(parts, axis=0)[:rows]


def hqq_grid(state: dict) -> Grid:
    """One HQQLinear's saved state as a Grid: W = (W_q - zero) * scale per group.

    With axis 1 hqq quantizes W reshaped to (rows * columns / group_size, group_size): one row
    per group, one scale and zero per row; the result is reshaped back to `shape`.
    """
    shape = tuple(int(n) for n in state["shape"])
    group = int(state["group_size"])
    assert int(state["axis"]) == 1, "groups along the input columns"
    n_groups = shape[0] * shape[1] // group
    code = hqq_unpack(state["W_q"].numpy(), state["packing"], n_groups)
    scale = state["scale"].double().numpy().reshape(n_groups, 1)
    zero = state["zero"].double().numpy().reshape(n_groups, 1)
    storage = str(state["scale"].dtype).removeprefix("torch.")
    return Grid(
        code.reshape(shape),
        np.broadcast_to(scale, (n_groups, group)).reshape(shape),
        np.broadcast_to(-zero * scale, (n_groups, group)).reshape(shape),
        2 ** int(state["nbits"]) - 1,
        storage,
    )


# GPTQ and AWQ as GPTQModel saves them (the AutoGPTQ and AutoAWQ-GEMM checkpoint layouts).


def gptq_weight(tensors: dict[str, np.ndarray], module: str, bits: int) -> np.ndarray:
    """W (out, in) of a GPTQ layer: scales[g, o] * (q[i, o] - (qzeros[g, o] + 1)), g = g_idx[i].

    qweight int32 (in * bits / 32, out): each column's codes as one bit stream down the input
    axis. qzeros int32 (groups, out * bits / 32): each group's zeros as one bit stream across
    the outputs, stored one less than the zero (the "v1" checkpoint format every GPTQ kernel
    reads). g_idx: the group of each input row (act-order permutes it).
    """
    qweight, qzeros = tensors[f"{module}.qweight"], tensors[f"{module}.qzeros"]
    scales = tensors[f"{module}.scales"].astype(np.float64)
    columns = scales.shape[1]
    rows = qweight.shape[0] * 32 // bits
    code = unpack_bits(qweight.T, bits, rows).T  # (in, out)
    zero = unpack_bits(qzeros, bits, columns) + 1  # (groups, out)
    group = tensors[f"{module}.g_idx"].astype(np.int64)
    return (scales[group] * (code - zero[group])).T


# AutoAWQ's GEMM packing: the eight 4-bit values of an int32 are columns 0 2 4 6 1 3 5 7.
_AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])


def _awq_unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    per_word = 32 // bits
    words = packed.shape[1]
    stream = unpack_bits(packed[..., None], bits, per_word)  # (rows, words, per_word)
    out = np.empty_like(stream)
    out[:, :, _AWQ_ORDER] = stream
    return out.reshape(packed.shape[0], words * per_word)


def awq_weight(
    tensors: dict[str, np.ndarray], module: str, bits: int, group_size: int
) -> np.ndarray:
    """W (out, in) of an AWQ GEMM layer: (q[i, o] - z[i // group, o]) * scales[i // group, o]."""
    code = _awq_unpack(tensors[f"{module}.qweight"], bits)  # (in, out)
    zero = _awq_unpack(tensors[f"{module}.qzeros"], bits)  # (groups, out)
    scales = tensors[f"{module}.scales"].astype(np.float64)
    group = np.arange(code.shape[0]) // group_size
    return ((code - zero[group]) * scales[group]).T


def reference_logits(
    model_dir: Path, tokens: list[int], weights: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Logits of the checkpoint at `model_dir` in float64, module weights replaced by `weights`.

    `weights` maps module names ("model.layers.0.mlp.up_proj", "lm_head") to matrices. The forward
    pass is transformers' own model class; float64 makes its rounding negligible next to float32.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    modules = dict(model.named_modules())
    for name, matrix in (weights or {}).items():
        target = modules[name].weight
        assert tuple(target.shape) == matrix.shape, (name, target.shape, matrix.shape)
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.asarray(matrix, dtype=np.float64)))
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def float32_tolerance(logits: np.ndarray, n_products: int, width: int) -> float:
    """How far a float32 forward pass may sit from the exact (float64) one, in logits.

    A logit is the end of `n_products` matrix products in sequence, each summing at most `width`
    terms that round with relative error at most u = 2^-24. Independent rounding errors add like
    a random walk (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 3.5), so
    their sum is about sqrt(n_products * width) * u relative to the largest logit; the factor 8
    covers the norms, activations and softmax that round in between, and the walk's tail.
    """
    u = 2.0**-24
    return 8 * np.sqrt(n_products * width) * u * float(np.abs(logits).max())


def assert_runs_stored_weights(
    logits: np.ndarray,
    model_dir: Path,
    tokens: list[int],
    weights: dict[str, np.ndarray],
    source: np.ndarray,
    label: str,
) -> None:
    """A float32 runner's `logits` are those of the weights its artifact stores.

    Expected are transformers' float64 logits of `model_dir` with `weights` in place; the runner
    may differ from them by float32 rounding (`float32_tolerance`), while the source model's own
    logits (`source`) must differ by far more, else the comparison could not tell the two apart.
    """
    expected = reference_logits(model_dir, tokens, weights)
    tolerance = float32_tolerance(expected, PRODUCTS, WIDTH)
    assert np.abs(logits - expected).max() <= tolerance, label
    assert np.abs(source - expected).max() > 10 * tolerance, label


def hqq_grids(artifact: Path) -> dict[str, Grid]:
    """Every HQQLinear of an HQQ artifact, by module name, from its qmodel.pt."""
    import torch

    saved = torch.load(artifact / "qmodel.pt", map_location="cpu", weights_only=True)
    return {name: hqq_grid(state) for name, state in saved.items() if "W_q" in state}


def round_to_nearest(weight: np.ndarray, bits: int, group_size: int, symmetric: bool) -> np.ndarray:
    """Plain round-to-nearest of each group of input columns: the peer a calibrated recipe beats.

    Symmetric: the grid centred on zero, step max|w| * 2 / (2^bits - 1) (GPTQ's sym grid).
    Asymmetric: the grid spanning [min, max] of the group, offset not rounded to a code.
    """
    levels = 2**bits - 1
    groups = weight.astype(np.float64).reshape(-1, group_size)
    if symmetric:
        step = np.abs(groups).max(axis=1, keepdims=True) * 2 / levels
        middle = (levels + 1) / 2
        codes = np.clip(np.round(groups / step + middle), 0, levels)
        return ((codes - middle) * step).reshape(weight.shape)
    low, high = groups.min(axis=1, keepdims=True), groups.max(axis=1, keepdims=True)
    step = (high - low) / levels
    codes = np.clip(np.round((groups - low) / step), 0, levels)
    return (codes * step + low).reshape(weight.shape)


def mean_kld(model_dir: Path, windows: list[list[int]], weights: dict[str, np.ndarray]) -> float:
    """Mean KL(source || model with `weights`) per token over `windows`, float64 throughout."""

    def log_softmax(logits: np.ndarray) -> np.ndarray:
        shifted = logits - logits.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

    total, count = 0.0, 0
    for window in windows:
        p = log_softmax(reference_logits(model_dir, window))
        q = log_softmax(reference_logits(model_dir, window, weights))
        total += float((np.exp(p) * (p - q)).sum())
        count += len(window)
    return total / count
