"""Run an EXL2 artifact with exllamav2 on CUDA: logits for the evaluation suite, text for a look."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quantize.transformers_runner import HFText, HFTextRunner


class Exl2Runner(HFTextRunner):
    def __init__(self, artifact: Path, n_ctx: int = 4096) -> None:
        from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config

        config = ExLlamaV2Config(str(artifact))
        config.max_seq_len = max(n_ctx, 16)
        self.model = ExLlamaV2(config)
        self.cache = ExLlamaV2Cache(self.model, max_seq_len=config.max_seq_len, lazy=True)
        self.model.load_autosplit(self.cache)
        # The tokenizer files are the source's, copied by the converter: transformers reads them
        # exactly as it does for the reference, so token ids agree by construction.
        self.text = HFText(artifact)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        import torch

        self.cache.current_seq_len = 0
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        with torch.inference_mode():
            out = self.model.forward(ids, self.cache, last_id_only=False)
        return out[0].float().cpu().numpy()

    def generate(self, prompt: str, max_tokens: int) -> str:
        from exllamav2 import ExLlamaV2Tokenizer
        from exllamav2.generator import ExLlamaV2DynamicGenerator

        generator = ExLlamaV2DynamicGenerator(
            model=self.model, cache=self.cache, tokenizer=ExLlamaV2Tokenizer(self.model.config)
        )
        return generator.generate(prompt=prompt, max_new_tokens=max_tokens, add_bos=True)
