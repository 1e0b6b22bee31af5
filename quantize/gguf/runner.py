"""Run a GGUF artifact with llama.cpp (llama-cpp-python): logits for evaluation, text for a look."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quantize.errors import ModelSourceError
from quantize.gguf.llama_quantize import LlamaLog


class GGUFRunner:
    def __init__(self, model_file: Path, n_ctx: int = 512, threads: int | None = None) -> None:
        from llama_cpp import Llama

        self.model_file = model_file
        with LlamaLog() as log:
            try:
                self.llama = Llama(
                    str(model_file), n_ctx=n_ctx, logits_all=True, n_threads=threads, verbose=False
                )
            except ValueError as err:
                # llama-cpp-python only says "Failed to load model"; llama.cpp's log says why.
                reasons = [line.split("error loading model: ")[-1].strip()
                           for line in log.lines if "error loading model" in line]  # fmt: skip
                why = f": {reasons[-1]}" if reasons else ""
                raise ModelSourceError(f"llama.cpp cannot load {model_file}{why}") from err

    @property
    def vocab_size(self) -> int:
        return self.llama.n_vocab()

    @property
    def bos_token_id(self) -> int | None:
        return self.llama.token_bos() if self.llama._model.add_bos_token() else None

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text each token stands for (0 for control tokens): for bits per byte."""
        import ctypes

        import llama_cpp

        buffer = ctypes.create_string_buffer(256)
        vocab = self.llama._model.vocab
        return np.array(
            [
                max(0, llama_cpp.llama_token_to_piece(vocab, token, buffer, 256, 0, False))
                for token in range(self.vocab_size)
            ],
            dtype=np.int64,
        )

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        if len(tokens) > self.llama.n_ctx():
            raise ValueError(f"{len(tokens)} tokens exceed the context of {self.llama.n_ctx()}")
        self.llama.reset()
        self.llama.eval(list(tokens))
        return np.array(self.llama.scores[: len(tokens)], dtype=np.float32)

    def generate(self, prompt: str, max_tokens: int) -> str:
        self.llama.reset()
        result = self.llama.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        return result["choices"][0]["text"]
