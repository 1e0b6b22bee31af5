"""Hugging Face Llama/Mistral checkpoint → GGUF (F32, F16 or BF16), tensor by tensor.

gguf-py does the file format; this module decides what goes in: llama.cpp's hyper-parameter keys
for arch `llama`, the tokenizer (`vocab.py`), and each tensor under its GGUF name. Tensor infos are
written first from the safetensors headers, then the data one tensor at a time, so peak memory is
the largest tensor (a few copies of it), whatever the model size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from quantize.errors import UnsupportedArchitectureError
from quantize.gguf.tensor_names import GGUF_ARCH, gguf_tensor_name
from quantize.gguf.vocab import add_vocab
from quantize.source import ModelSource, TensorEntry

OUT_TYPES = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
}
# How `_prepare` hands each GGUF type to the writer (bfloat16 travels as its raw 16 bits).
NUMPY_DTYPES = {
    gguf.GGMLQuantizationType.F32: np.dtype(np.float32),
    gguf.GGMLQuantizationType.F16: np.dtype(np.float16),
    gguf.GGMLQuantizationType.BF16: np.dtype(np.uint16),
}
# Buffers a Hugging Face checkpoint may carry that llama.cpp recomputes itself.
SKIPPED_TENSORS = ("rotary_emb.inv_freq",)


def convert_to_gguf(
    source: ModelSource,
    out_file: Path,
    out_type: str = "F16",
    on_tensor: Callable[[int, int], None] | None = None,
) -> Path:
    """Write `source` as a GGUF file; `on_tensor(done, total)` is called after each tensor."""
    if out_type not in OUT_TYPES:
        raise ValueError(f"out_type must be one of {', '.join(OUT_TYPES)}, not {out_type!r}")
    hparams = _hyperparameters(source.config)
    entries = [e for e in source.tensors if not e.name.endswith(SKIPPED_TENSORS)]
    names = {e.name: gguf_tensor_name(e.name, source.n_layers) for e in entries}

    writer = gguf.GGUFWriter(out_file, gguf.MODEL_ARCH_NAMES[GGUF_ARCH])
    try:
        _add_metadata(writer, source, hparams, OUT_TYPES[out_type])
        add_vocab(writer, source.path, hparams["vocab_size"])
        for entry in entries:
            ggml_type = _ggml_type(entry, out_type)
            numpy_dtype = NUMPY_DTYPES[ggml_type]
            nbytes = math.prod(entry.shape) * numpy_dtype.itemsize
            writer.add_tensor_info(
                names[entry.name], entry.shape, numpy_dtype, nbytes, raw_dtype=ggml_type
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        done = 0
        for entry, tensor in source.read():
            if entry.name not in names:
                continue
            data = _prepare(entry, tensor, hparams, out_type)
            writer.write_tensor_data(data)
            done += 1
            if on_tensor:
                on_tensor(done, len(entries))
    finally:
        writer.close()
    return out_file


def _hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The values llama.cpp needs, with Hugging Face's defaults where a config leaves one out."""
    n_head = config["num_attention_heads"]
    hidden = config["hidden_size"]
    rope = dict(config.get("rope_parameters") or {})
    if config.get("rope_scaling"):
        rope.update(config["rope_scaling"])
    return {
        "context_length": config.get("max_position_embeddings", 4096),
        "hidden_size": hidden,
        "n_layers": config["num_hidden_layers"],
        "ffn_size": config["intermediate_size"],
        "n_head": n_head,
        "n_head_kv": config.get("num_key_value_heads") or n_head,
        "head_dim": config.get("head_dim") or hidden // n_head,
        "rms_eps": config.get("rms_norm_eps", 1e-6),
        "rope_theta": config.get("rope_theta") or rope.get("rope_theta", 10000.0),
        "rope": rope,
        "sliding_window": config.get("sliding_window"),
        "vocab_size": config["vocab_size"],
    }


def _add_metadata(
    writer: gguf.GGUFWriter, source: ModelSource, hp: dict[str, Any], file_type: int
) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(source.name)
    writer.add_size_label(gguf.size_label(source.n_parameters, 0, 0, 0))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_vocab_size(hp["vocab_size"])
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_block_count(hp["n_layers"])
    writer.add_feed_forward_length(hp["ffn_size"])
    writer.add_head_count(hp["n_head"])
    writer.add_head_count_kv(hp["n_head_kv"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_rope_dimension_count(hp["head_dim"])
    if hp["head_dim"] * hp["n_head"] != hp["hidden_size"]:
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    if hp["sliding_window"]:
        # Recorded for completeness: llama.cpp's `llama` graph attends to the whole context, which
        # equals the checkpoint's behaviour for contexts up to the window.
        writer.add_sliding_window(hp["sliding_window"])
    _add_rope_scaling(writer, hp["rope"])


def _add_rope_scaling(writer: gguf.GGUFWriter, rope: dict[str, Any]) -> None:
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind == "default":
        return
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    else:
        raise UnsupportedArchitectureError(
            f"RoPE scaling {kind!r} is not supported; supported: none, linear, yarn"
        )


def _ggml_type(entry: TensorEntry, out_type: str) -> gguf.GGMLQuantizationType:
    # Norm weights (1-D) stay F32, as in llama.cpp's converter: tiny and precision-sensitive.
    if len(entry.shape) == 1 or out_type == "F32":
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType[out_type]


def _prepare(entry: TensorEntry, tensor: Any, hp: dict[str, Any], out_type: str) -> np.ndarray:
    """Permute Q/K for llama.cpp's RoPE layout and cast to the GGUF type, as a NumPy array."""
    import torch

    if entry.name.endswith("self_attn.q_proj.weight"):
        tensor = _unpermute_rope(tensor, hp["n_head"])
    elif entry.name.endswith("self_attn.k_proj.weight"):
        tensor = _unpermute_rope(tensor, hp["n_head_kv"])

    ggml_type = _ggml_type(entry, out_type)
    if ggml_type == gguf.GGMLQuantizationType.F32:
        return tensor.to(torch.float32).numpy()
    if ggml_type == gguf.GGMLQuantizationType.BF16:
        return tensor.to(torch.bfloat16).view(torch.uint16).numpy()
    half = tensor.to(torch.float16)
    if not torch.isfinite(half).all():
        raise UnsupportedArchitectureError(
            f"{entry.name} has values beyond float16's range; convert to BF16 instead"
        )
    return half.numpy()


def _unpermute_rope(weight: Any, n_head: int) -> Any:
    """Hugging Face stores each head's rotary pairs as two halves; llama.cpp wants them interleaved.

    Within a head, rows (0..d/2-1) and (d/2..d-1) form the pairs in HF's layout; llama.cpp expects
    rows (0,1), (2,3), ... . Reshape to (head, 2, d/2, in), swap the middle axes, flatten back.
    """
    rows, cols = weight.shape
    return weight.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
