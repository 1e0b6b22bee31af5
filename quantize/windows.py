"""Calibration and evaluation text → fixed-length token windows, the way llama.cpp cuts them.

`llama-imatrix` and `llama-perplexity` both tokenize their whole input file once, cut the token
stream into consecutive, non-overlapping chunks of `n_ctx` tokens (an incomplete tail chunk is never
evaluated), and, when the vocabulary asks for BOS, *overwrite* the first token of every chunk with
BOS (`tokens[seq_start] = llama_vocab_bos(vocab)`, restored after the batch is built). BOS is not
prepended, so every window is exactly `n_ctx` tokens long and one text token per window is never
seen. Doing the same here keeps our importance matrices and perplexities comparable with theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quantize.errors import QuantizeError

# Documents are separated the way they are in a plain-text calibration file fed to llama.cpp
# (`-f file.txt`): a blank line between paragraphs/documents.
DOCUMENT_SEPARATOR = "\n\n"


def tokenize_for_windows(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Turn calibration documents into the one token stream that `token_windows` cuts.

    The documents are joined with a blank line and tokenized in one call, as llama.cpp tokenizes
    its single input file: windows then run across document boundaries instead of padding each
    document. Like llama.cpp, the stream starts with the tokenizer's own special prefix (BOS for
    Llama/Mistral), so the first window is `[BOS, t0, t1, ...]` and every later window lines up
    with llama.cpp's on the same tokens.
    """
    text = DOCUMENT_SEPARATOR.join(texts)
    if not text.strip():
        raise QuantizeError("no text to tokenize: the documents are empty")
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return [int(i) for i in ids]


def token_windows(ids: Sequence[int], n_ctx: int, bos_id: int | None) -> list[list[int]]:
    """Cut a token stream into consecutive `n_ctx`-token windows, dropping the incomplete tail.

    With `bos_id`, the first token of each window is *replaced* by BOS (llama.cpp's behaviour, see
    the module docstring); the window length stays `n_ctx`.
    """
    if n_ctx < 1:
        raise QuantizeError(f"context length must be at least 1 token, got {n_ctx}")
    n_windows = len(ids) // n_ctx
    if n_windows == 0:
        raise QuantizeError(
            f"the text has {len(ids)} tokens, but one window of context {n_ctx} needs at least "
            f"{n_ctx}; give more text or a smaller context"
        )
    windows = []
    for w in range(n_windows):
        window = [int(t) for t in ids[w * n_ctx : (w + 1) * n_ctx]]
        if bos_id is not None:
            window[0] = bos_id
        windows.append(window)
    return windows
