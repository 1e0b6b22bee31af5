"""Run a Hugging Face checkpoint in torch: the FP16 reference of the evaluation suite.

The weights are upcast to float32 for the forward pass: on a CPU, bf16 matrix products round
every partial sum, and the reference should be the checkpoint's function, not the rounding of
one machine's kernels. AWQ/GPTQ artifacts, which transformers loads unchanged, reuse this runner.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


class HFText:
    """A checkpoint's tokenizer as the Runner contract needs it (shared by every runner whose
    artifact carries Hugging Face tokenizer files)."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` with the tokenizer's own prefix (BOS for Llama/Mistral)."""
        return [int(i) for i in self.tokenizer(text, add_special_tokens=True)["input_ids"]]

    def token_bytes(self, vocab_size: int) -> np.ndarray:
        """UTF-8 bytes of text each token stands for (0 for control tokens): for bits per byte."""
        lengths = np.zeros(vocab_size, np.int64)
        special = set(self.tokenizer.all_special_ids)
        byte_level = _is_byte_level(self.tokenizer)
        decoder = _byte_decoder() if byte_level else {}
        pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        for token_id, piece in enumerate(pieces):
            if token_id in special or piece is None or token_id >= vocab_size:
                continue
            if _BYTE_PIECE.match(piece):
                lengths[token_id] = 1
            elif byte_level:
                lengths[token_id] = sum(1 for char in piece if char in decoder)
            else:
                lengths[token_id] = len(piece.replace("\u2581", " ").encode("utf-8"))
        return lengths


class HFTextRunner:
    """The tokenizer side of the Runner contract, for every runner whose artifact carries Hugging
    Face tokenizer files: a subclass sets `self.text` and says how wide its logits are."""

    text: HFText

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def bos_token_id(self) -> int | None:
        return self.text.bos_token_id

    def tokenize(self, text: str) -> list[int]:
        return self.text.tokenize(text)

    def token_bytes(self) -> np.ndarray:
        return self.text.token_bytes(self.vocab_size)


class TransformersRunner(HFTextRunner):
    """The Runner contract over a transformers causal LM: the checkpoint at `path`, or `model`
    when another library has already loaded it (hqq), with the tokenizer files at `path`."""

    def __init__(
        self,
        path: Path,
        dtype: str = "float32",
        threads: int | None = None,
        model: Any = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        self.text = HFText(self.path)
        self.tokenizer = self.text.tokenizer
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, dtype))
        self.model = model
        self.model.eval()

    @property
    def vocab_size(self) -> int:
        """The width of the logits (the config's vocabulary, padding included)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            ids = torch.tensor([list(tokens)], dtype=torch.long)
            return self.model(input_ids=ids).logits[0].float().numpy()

    def generate(self, prompt: str, max_tokens: int) -> str:
        import torch

        inputs = self.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with `threads` torch threads (0: leave torch's choice), restoring it afterwards."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _is_byte_level(tokenizer: object) -> bool:
    """GPT-2 style byte-level BPE (Llama 3, Qwen) maps bytes to printable characters."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    return "ByteLevel" in json.dumps(json.loads(backend.to_str())["decoder"])


def _byte_decoder() -> dict[str, int]:
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}
