"""Whatever the user names as a reference or candidate, described and opened as a Runner.

Three kinds of path are accepted, so files made by other tools can be evaluated too:
- a bielik-quant artifact directory (it has `bielik-quant.json`): its format plugin opens it;
- a `.gguf` file (from llama.cpp's own tools, say): llama.cpp runs it;
- a Hugging Face checkpoint directory (`config.json` + safetensors): transformers runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval_quant.errors import EvalError
from quantize.artifact import MANIFEST, MODEL_CARD, Artifact
from quantize.registry import Runner, get_format


@dataclass
class ModelInfo:
    path: Path
    name: str
    format: str  # "hf" for a checkpoint run by transformers, else the artifact's format
    variant: str
    imatrix: bool | None  # None where the format has no importance matrix
    size_bytes: int
    bits_per_weight: float | None
    _sha256: str | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        """Content hash of the weights (computed on first use: gigabytes for a 7B model)."""
        if self._sha256 is None:
            self._sha256 = _content_sha256(self)
        return self._sha256

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path.resolve()),
            "name": self.name,
            "format": self.format,
            "variant": self.variant,
            "imatrix": self.imatrix,
            "size_bytes": self.size_bytes,
            "bits_per_weight": self.bits_per_weight,
            "sha256": self.sha256,
        }


def describe(path: Path) -> ModelInfo:
    """What `path` is, from its metadata alone (nothing is loaded)."""
    if not path.exists():
        raise EvalError(f"{path} does not exist")
    if path.is_file() and path.suffix == ".gguf":
        return _describe_gguf_file(path)
    if (path / MANIFEST).is_file():
        manifest = Artifact.open(path).manifest
        imatrix = manifest.get("imatrix") is not None if manifest["format"] == "gguf" else None
        return ModelInfo(
            path=path,
            name=path.name,
            format=manifest["format"],
            variant=manifest["variant"],
            imatrix=imatrix,
            size_bytes=int(manifest["size_bytes"]),
            bits_per_weight=manifest.get("bits_per_weight"),
        )
    if (path / "config.json").is_file():
        from quantize.source import ModelSource

        source = ModelSource.open(path)
        size = sum(file.stat().st_size for file in source.weight_files)
        return ModelInfo(
            path=path,
            name=source.name,
            format="hf",
            variant=str(source.config.get("torch_dtype") or source.config.get("dtype") or "?")
            .replace("bfloat16", "BF16")
            .replace("float16", "F16")
            .replace("float32", "F32"),
            imatrix=None,
            size_bytes=size,
            bits_per_weight=round(8 * size / source.n_parameters, 4),
            _sha256=None,
        )
    raise EvalError(
        f"{path} is not a model: expected a bielik-quant artifact directory, a .gguf file or a "
        "Hugging Face checkpoint directory"
    )


def open_runner(info: ModelInfo, n_ctx: int) -> Runner:
    """Load the model; the runner will be given sequences of up to `n_ctx` tokens."""
    if info.format == "hf":
        from quantize.transformers_runner import TransformersRunner

        return TransformersRunner(info.path)
    if info.path.is_file():
        from quantize.gguf.runner import GGUFRunner

        return GGUFRunner(info.path, n_ctx=n_ctx)
    fmt = get_format(info.format)
    fmt.check()
    return fmt.open(info.path, n_ctx=n_ctx)


def output_matrix(info: ModelInfo) -> np.ndarray:
    """The reference's output matrix W (vocab, hidden), float32: its logits are W @ hidden state.

    Read from the files (safetensors or GGUF), not from a loaded model, so it costs no second copy
    of the model in memory.
    """
    if info.format == "hf":
        from safetensors import safe_open

        from quantize.source import ModelSource

        source = ModelSource.open(info.path)
        names = {entry.name: entry for entry in source.tensors}
        entry = names.get("lm_head.weight") or names.get("model.embed_tokens.weight")
        if entry is None:
            raise EvalError(f"{info.path}: no lm_head.weight or tied embeddings")
        with safe_open(entry.file, framework="pt") as handle:
            return handle.get_tensor(entry.name).float().numpy()
    if info.format == "gguf":
        import gguf

        file = info.path if info.path.is_file() else _gguf_model_file(info.path)
        tensors = {t.name: t for t in gguf.GGUFReader(file).tensors}
        tensor = tensors.get("output.weight") or tensors.get("token_embd.weight")
        if tensor is None:
            raise EvalError(f"{file}: no output.weight or token_embd.weight")
        return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    raise EvalError(
        f"{info.path}: a reference must be a Hugging Face checkpoint or a GGUF file, "
        f"not {info.format}"
    )


def _gguf_model_file(artifact: Path) -> Path:
    files = [p for p in artifact.glob("*.gguf") if p.name != "imatrix.gguf"]
    if len(files) != 1:
        raise EvalError(f"{artifact} should hold exactly one model .gguf, found {len(files)}")
    return files[0]


def _describe_gguf_file(path: Path) -> ModelInfo:
    import gguf

    from quantize.gguf.llama_quantize import FTYPE_NAMES, KEY_IMATRIX_FILE, ftype
    from quantize.gguf.reader import read_gguf

    reader = read_gguf(path, EvalError)
    kind_field = reader.get_field(gguf.Keys.General.TYPE)
    kind = kind_field.contents() if kind_field else gguf.GGUFType.MODEL
    if kind == gguf.GGUFType.IMATRIX:
        raise EvalError(f"{path} is an importance matrix, not a model: evaluate the model's .gguf")
    if kind != gguf.GGUFType.MODEL:
        raise EvalError(f"{path} is a GGUF file of type {kind!r}, not a model")
    names = {ftype(name): name for name in FTYPE_NAMES}
    file_type = reader.get_field(gguf.Keys.General.FILE_TYPE)
    variant = names.get(int(file_type.contents()), "?") if file_type else "?"
    n_weights = sum(int(tensor.n_elements) for tensor in reader.tensors)
    weight_bytes = sum(int(tensor.n_bytes) for tensor in reader.tensors)
    return ModelInfo(
        path=path,
        name=path.stem,
        format="gguf",
        variant=variant,
        imatrix=reader.get_field(KEY_IMATRIX_FILE) is not None,
        size_bytes=path.stat().st_size,
        bits_per_weight=round(8 * weight_bytes / n_weights, 4) if n_weights else None,
    )


def _content_sha256(info: ModelInfo) -> str:
    from quantize.source import ModelSource, sha256_files

    if info.path.is_file():
        return sha256_files([info.path])
    if info.format == "hf":
        return ModelSource.open(info.path).sha256
    # An artifact: every file but the ones that describe it.
    return sha256_files(
        sorted(
            file
            for file in info.path.rglob("*")
            if file.is_file() and file.name not in (MANIFEST, MODEL_CARD)
        )
    )
