"""Write a randomly initialised Mistral checkpoint with Mistral-7B v0.1's shapes, for benchmarks.

Every matrix has the size it has in Mistral-7B v0.1 (hidden 4096, FFN 14336, 32 query heads and 8
key/value heads of 128, vocabulary 32000); only the number of layers is chosen (`--layers`, 32 for
the full 7.24B parameters). The checkpoint looks like a published one: `config.json`, bfloat16
weights in sharded safetensors files with a `model.safetensors.index.json`, and a SentencePiece BPE
tokenizer with byte fallback trained on bielik-quant's own corpus.

The weights are generated one tensor at a time and written one shard at a time, so memory stays at
about one shard (`--shard-gb`) however many layers are asked for.

    python benchmarks/make_random_model.py --layers 28 --out /tmp/bench/mistral-28l
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MISTRAL_7B_LAYERS = 32
DEFAULT_LAYERS = 28
DEFAULT_VOCAB = 32000
INDEX_NAME = "model.safetensors.index.json"
# The repository's own packages (the corpus, the tokenizer trainer), importable without installing.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:  # bfloat16: two bytes an element
        count = 1
        for dim in self.shape:
            count *= dim
        return 2 * count


def mistral_7b_config(layers: int, vocab_size: int):  # -> transformers.MistralConfig
    """Mistral-7B v0.1's configuration with `layers` decoder layers and `vocab_size` tokens."""
    from transformers import MistralConfig

    config = MistralConfig(
        vocab_size=vocab_size,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        sliding_window=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    config.architectures = ["MistralForCausalLM"]
    config.dtype = "bfloat16"
    return config


def tensor_specs(config) -> list[TensorSpec]:
    """Names and shapes of the checkpoint's tensors, in the order transformers saves them.

    The model is built on the meta device, so this allocates no weights.
    """
    import torch
    from transformers import MistralForCausalLM

    with torch.device("meta"):
        model = MistralForCausalLM(config)
    return [TensorSpec(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def plan_shards(specs: list[TensorSpec], shard_bytes: int) -> list[list[TensorSpec]]:
    """Split `specs`, in order, into shards of at most `shard_bytes` (bigger tensors: alone)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def random_tensors(specs: list[TensorSpec], first_index: int, seed: int, std: float) -> Iterator:
    """Yield (name, tensor): matrices ~ N(0, std²) as transformers initialises them, norms = 1.

    Each tensor has its own seed (`seed` + its position in the checkpoint), so the weights do not
    depend on how the checkpoint is sharded.
    """
    import torch

    for offset, spec in enumerate(specs):
        if len(spec.shape) == 1:
            yield spec.name, torch.ones(spec.shape, dtype=torch.bfloat16)
            continue
        generator = torch.Generator().manual_seed(seed + first_index + offset)
        tensor = torch.empty(spec.shape, dtype=torch.bfloat16)
        yield spec.name, tensor.normal_(0.0, std, generator=generator)


def write_weights(config, out_dir: Path, shard_bytes: int, seed: int) -> dict[str, object]:
    """Write the sharded safetensors files and their index into `out_dir`; return a summary."""
    from safetensors.torch import save_file

    specs = tensor_specs(config)
    shards = plan_shards(specs, shard_bytes)
    weight_map: dict[str, str] = {}
    first_index = 0
    for number, shard in enumerate(shards, start=1):
        filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = dict(random_tensors(shard, first_index, seed, config.initializer_range))
        save_file(tensors, out_dir / filename, metadata={"format": "pt"})
        del tensors
        weight_map.update({spec.name: filename for spec in shard})
        first_index += len(shard)
        print(f"  wrote {filename} ({len(shard)} tensors)", file=sys.stderr)

    total = sum(spec.nbytes for spec in specs)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", "utf-8")
    largest = max(specs, key=lambda spec: spec.nbytes)
    return {
        "tensors": len(specs),
        "parameters": total // 2,
        "weight_bytes": total,
        "shards": len(shards),
        "largest_tensor": {"name": largest.name, "shape": list(largest.shape)},
    }


def write_tokenizer(out_dir: Path, vocab_size: int, tokenizer_dir: Path | None) -> int:
    """Put a SentencePiece BPE tokenizer into `out_dir`; return its vocabulary size.

    With `tokenizer_dir` its files are copied; otherwise one is trained on the built-in corpus.
    """
    import sentencepiece

    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer_dir is None:
            from calibration_data import load
            from training.tokenizer import train_sentencepiece

            tokenizer_dir = train_sentencepiece(load("pl-en").texts, Path(tmp) / "tok", vocab_size)
        for path in tokenizer_dir.iterdir():
            if path.is_file():
                shutil.copy2(path, out_dir / path.name)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    return processor.vocab_size()


def make_random_model(
    out_dir: Path,
    layers: int = DEFAULT_LAYERS,
    vocab_size: int = DEFAULT_VOCAB,
    shard_gb: float = 2.0,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
) -> dict[str, object]:
    """Write the checkpoint to `out_dir` (created; must be absent or empty); return a summary."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # The tokenizer comes first: the model's vocabulary is whatever size it could be trained to.
    tokens = write_tokenizer(out_dir, vocab_size, tokenizer_dir)
    config = mistral_7b_config(layers, tokens)
    config.save_pretrained(out_dir)
    summary = write_weights(config, out_dir, int(shard_gb * 1e9), seed)
    return {
        "path": str(out_dir),
        "layers": layers,
        "vocab_size": tokens,
        **summary,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to create")
    parser.add_argument(
        "--layers",
        type=int,
        default=DEFAULT_LAYERS,
        help=f"decoder layers (Mistral-7B has {MISTRAL_7B_LAYERS}; default {DEFAULT_LAYERS})",
    )
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB)
    parser.add_argument("--shard-gb", type=float, default=2.0, help="largest shard, in GB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer", type=Path, help="copy this tokenizer directory instead of training one"
    )
    args = parser.parse_args(argv)
    summary = make_random_model(
        args.out, args.layers, args.vocab_size, args.shard_gb, args.seed, args.tokenizer
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
