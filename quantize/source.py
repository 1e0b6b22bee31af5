"""A Hugging Face checkpoint as every exporter reads it: checked once, streamed tensor by tensor.

Opening validates everything a conversion would otherwise trip over halfway (config, architecture,
every safetensors shard's header and size, the tokenizer), so a bad directory fails in one line
before anything is written. Tensors are read from memory-mapped safetensors one at a time: peak
memory is a few tensors, not the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantize.errors import ModelSourceError, QuantizeError, UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
# What a quantized artifact carries over from its source unchanged, so it tokenizes and chats
# exactly as the source does.
SIDE_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
# The linear layers of a Llama/Mistral decoder block: what weight-only quantizers replace.
BLOCK_LINEAR = re.compile(
    r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$"
)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the safetensors header describes it, before any byte is read."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name: "BF16", "F16", "F32", ...
    file: Path


@dataclass(frozen=True)
class ModelSource:
    path: Path
    config: dict[str, Any]
    tensors: tuple[TensorEntry, ...]

    @classmethod
    def open(cls, path: Path | str) -> ModelSource:
        path = Path(path)
        if not path.is_dir():
            raise ModelSourceError(
                f"{path} is not a directory (expected a Hugging Face checkpoint)"
            )
        config = _read_config(path)
        architectures = config.get("architectures") or []
        if not any(arch in SUPPORTED_ARCHITECTURES for arch in architectures):
            found = ", ".join(architectures) or f"model_type {config.get('model_type')!r}"
            raise UnsupportedArchitectureError(
                f"{path}: architecture {found} is not supported; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ModelSourceError(
                f"{path} has no tokenizer (expected {' or '.join(TOKENIZER_FILES)})"
            )
        return cls(path=path, config=config, tensors=tuple(_read_tensor_entries(path)))

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def architecture(self) -> str:
        return next(a for a in self.config["architectures"] if a in SUPPORTED_ARCHITECTURES)

    @property
    def n_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def weight_files(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(entry.file for entry in self.tensors))

    @property
    def n_parameters(self) -> int:
        total = 0
        for entry in self.tensors:
            count = 1
            for dim in entry.shape:
                count *= dim
            total += count
        return total

    def read(self) -> Iterator[tuple[TensorEntry, torch.Tensor]]:
        """Yield the tensors in `self.tensors` order, one at a time, from memory-mapped files."""
        from safetensors import safe_open

        # One open per tensor: closing the handle unmaps the shard, so the pages a tensor touched
        # leave the resident set before the next is read (a shard held open for all its tensors
        # made peak RSS grow with the shard size).
        for entry in self.tensors:
            with safe_open(entry.file, framework="pt") as handle:
                tensor = handle.get_tensor(entry.name)
            yield entry, tensor

    def check_group_size(
        self, variant: str, group_size: int, pattern: re.Pattern[str] = BLOCK_LINEAR
    ) -> None:
        """Refuse, before any work, a matrix whose input width `group_size` does not divide.

        Libraries differ in what they do then (hqq groups across rows, mlx-lm leaves the layer
        unquantized, GPTQModel fails midway), and none of it is the variant the user asked for.
        """
        for entry in self.tensors:
            if len(entry.shape) == 2 and pattern.match(entry.name) and entry.shape[1] % group_size:
                raise QuantizeError(
                    f"{variant}: group size {group_size} does not divide the input width "
                    f"{entry.shape[1]} of {entry.name}; choose a variant whose group size does"
                )

    def copy_side_files(self, out: Path) -> None:
        """The tokenizer and generation settings, byte for byte, into an artifact directory."""
        for name in SIDE_FILES:
            if (self.path / name).is_file():
                shutil.copy2(self.path / name, out / name)

    @cached_property
    def sha256(self) -> str:
        """Content hash of config.json and the weight files (streamed; a 7B model takes a while)."""
        return sha256_files([self.path / "config.json", *self.weight_files])


def cache_dir() -> Path:
    """Where bielik-quant keeps what it can rebuild: $XDG_CACHE_HOME (or ~/.cache)/bielik-quant."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bielik-quant"


HASH_CACHE = "sha256.json"


def sha256_files(files: Iterable[Path]) -> str:
    """One hash over several files: of one `name  sha256(content)` line per file, in order.

    Each file's own hash is remembered (see `_HashCache`), so hashing a 7B model a second time
    reads none of its bytes.
    """
    return _listing_sha256((file.name, file) for file in files)


def sha256_tree(root: Path, skip: Callable[[Path], bool] | None = None) -> str:
    """One hash over every file under `root`: a `relative/path  sha256(content)` line per file,
    sorted by path; `skip(relative_path)` leaves files out. Remembered like `sha256_files`."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    relative = ((file.relative_to(root), file) for file in files)
    return _listing_sha256(
        (name.as_posix(), file) for name, file in relative if skip is None or not skip(name)
    )


def _listing_sha256(named: Iterable[tuple[str, Path]]) -> str:
    """The hash of one `name  sha256(content)` line per (name, file), in the order given."""
    cache = _HashCache.load()
    lines = "".join(f"{name}  {cache.sha256(file)}\n" for name, file in named)
    cache.save()
    return hashlib.sha256(lines.encode()).hexdigest()


class _HashCache:
    """File hashes in `cache_dir()/sha256.json`, keyed by resolved path and valid while the file's
    size, mtime (ns) and inode are unchanged: what make and git trust a file by, too.

    A missing, corrupt or unwritable cache only costs a re-read. Saving merges with what another
    process wrote meanwhile and replaces the file atomically, so readers never see half of one.
    """

    def __init__(self, entries: dict[str, list]) -> None:
        self.entries = entries
        self.new: dict[str, list] = {}

    @classmethod
    def load(cls) -> _HashCache:
        return cls(_read_hash_cache(cache_dir() / HASH_CACHE))

    def sha256(self, file: Path) -> str:
        path = str(file.resolve())
        stat = file.stat()
        key = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = self.entries.get(path)
        if entry is not None and entry[:3] == key:
            return entry[3]
        with file.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        self.entries[path] = self.new[path] = [*key, digest]
        return digest

    def save(self) -> None:
        if not self.new:
            return
        file = cache_dir() / HASH_CACHE
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            entries = _read_hash_cache(file)  # what other processes added since we read it
            entries.update(self.new)
            # Forget files that no longer exist, so the cache does not grow without bound.
            entries = {path: entry for path, entry in entries.items() if os.path.exists(path)}
            handle, temporary = tempfile.mkstemp(prefix=HASH_CACHE, dir=file.parent)
        except OSError:
            return  # a read-only cache directory: the next run hashes again
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(entries, out)
            os.replace(temporary, file)
        except OSError:
            Path(temporary).unlink(missing_ok=True)  # a full disk: the same


def _read_hash_cache(file: Path) -> dict[str, list]:
    """The cache's entries; whatever is not a well-formed cache counts as empty."""
    try:
        entries = json.loads(file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {
        path: entry
        for path, entry in entries.items()
        if isinstance(entry, list)
        and len(entry) == 4
        and all(isinstance(value, int) for value in entry[:3])
        and isinstance(entry[3], str)
    }


def stored_tensors(file: Path) -> dict[str, tuple[tuple[int, ...], int]]:
    """name → (shape, bytes as stored) for every tensor of a safetensors file, no data read.

    The safetensors library reports shapes and dtypes but not byte sizes; the header (a u64
    length, then JSON with each tensor's byte range) gives them exactly, packed dtypes included.
    """
    with file.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return {
        name: (tuple(info["shape"]), info["data_offsets"][1] - info["data_offsets"][0])
        for name, info in header.items()
    }


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelSourceError(f"{path} is not a Hugging Face checkpoint: no config.json")
    try:
        config = json.loads(config_file.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelSourceError(f"{config_file} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ModelSourceError(f"{config_file} does not hold a JSON object")
    return config


def _read_tensor_entries(path: Path) -> Iterator[TensorEntry]:
    """Headers of every shard, validated by safetensors itself (truncated files fail here)."""
    from safetensors import SafetensorError, safe_open

    for file in _weight_files(path):
        try:
            with safe_open(file, framework="pt") as handle:
                for name in sorted(handle.keys()):
                    view = handle.get_slice(name)
                    yield TensorEntry(name, tuple(view.get_shape()), view.get_dtype(), file)
        except SafetensorError as err:
            raise ModelSourceError(f"{file} is not a valid safetensors file ({err})") from err


def _weight_files(path: Path) -> list[Path]:
    if (path / SHARD_INDEX).is_file():
        try:
            weight_map = json.loads((path / SHARD_INDEX).read_text("utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ModelSourceError(f"{path / SHARD_INDEX} is not a valid shard index") from err
        files = [path / name for name in dict.fromkeys(weight_map.values())]
        missing = [file.name for file in files if not file.is_file()]
        if missing:
            raise ModelSourceError(f"{path}: shards listed in {SHARD_INDEX} are missing: {missing}")
        return files
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    if any(path.glob("*.bin")) or any(path.glob("*.pth")):
        raise ModelSourceError(
            f"{path} holds PyTorch pickles, not safetensors; re-save it with "
            "`model.save_pretrained(dir)` (safetensors is the default)"
        )
    raise ModelSourceError(f"{path} has no {SINGLE_FILE} or {SHARD_INDEX}")
