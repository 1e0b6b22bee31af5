"""A tiny but real Mistral model, built locally in seconds: the tests' fixture and the demo's model.

Everything a 7B Mistral has is here at toy scale: grouped-query attention, a sliding window, RoPE,
SwiGLU and RMSNorm, untied output embeddings, a SentencePiece BPE tokenizer with byte fallback,
and a checkpoint written by `save_pretrained` (safetensors, bfloat16) like a published one. Every
hidden size is a multiple of 256, the block size of llama.cpp's k-quants and i-quants, so every
GGUF quant type applies to every matrix. A short training run on our own text makes the
predictions far from uniform, which quantization statistics (KLD, Δp) need to mean anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinyMistral:
    """Shapes of the tiny model; Mistral-7B's are hidden 4096, 32 layers, 32/8 heads, FFN 14336."""

    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention: two query heads share each K/V head
    max_position_embeddings: int = 2048
    sliding_window: int = 1024  # longer than any window the tests evaluate (llama.cpp ignores it)
    train_steps: int = 160
    train_batch: int = 8
    train_seq_len: int = 128
    learning_rate: float = 3e-3
    seed: int = 0


def build_tiny_mistral(
    tokenizer_dir: Path, texts: Sequence[str], out_dir: Path, spec: TinyMistral = TinyMistral()
) -> Path:
    """Train a tiny Mistral on `texts` with the tokenizer in `tokenizer_dir`; save it to `out_dir`.

    Returns `out_dir`, a Hugging Face checkpoint directory (config, safetensors, tokenizer files).
    """
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=True)["input_ids"]]
    if len(ids) < 4 * spec.train_seq_len:
        raise ValueError(f"{len(ids)} tokens of text is too little to train the tiny model")
    stream = torch.tensor(ids, dtype=torch.long)

    torch.manual_seed(spec.seed)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        sliding_window=spec.sliding_window,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = MistralForCausalLM(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.learning_rate, total_steps=spec.train_steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(spec.seed)
    for _ in range(spec.train_steps):
        starts = torch.randint(
            0, len(stream) - spec.train_seq_len - 1, (spec.train_batch,), generator=generator
        )
        batch = torch.stack([stream[s : s + spec.train_seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    model.eval()
    model.to(torch.bfloat16)  # published Mistral checkpoints are bfloat16
    model.config.dtype = torch.bfloat16
    out_dir.mkdir(parents=True, exist_ok=False)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # transformers writes tokenizer.json; llama.cpp and our GGUF conversion prefer the
    # SentencePiece model itself, which Mistral and Bielik ship alongside it.
    if (tokenizer_dir / "tokenizer.model").exists():
        shutil.copy2(tokenizer_dir / "tokenizer.model", out_dir / "tokenizer.model")
    return out_dir
