"""The tokenizer's GGUF metadata, from the three kinds of tokenizer Llama/Mistral checkpoints ship.

1. `tokenizer.model` (SentencePiece; Mistral, Bielik): gguf-py's `SentencePieceVocab` reads it.
2. `tokenizer.json` only, a SentencePiece-style BPE with byte fallback: llama.cpp's own converter
   (and gguf-py's `LlamaHfVocab`) give every token the score -1000, and llama.cpp's SentencePiece
   tokenizer then merges in the wrong order. We score each token by the rank of the merge that
   creates it, which is the order the BPE model merges in, so llama.cpp tokenizes like transformers.
3. `tokenizer.json`, a byte-level (GPT-2 / Llama 3) BPE: gguf-py's `BpeVocab` plus its merges, with
   llama.cpp's name for the pre-tokenizer.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import gguf

from quantize.errors import UnsupportedArchitectureError

# Pre-tokenizer regexes llama.cpp knows by name, for byte-level BPE vocabularies.
LLAMA3_PRETOKENIZER = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

Token = tuple[bytes, float, gguf.TokenType]


def add_vocab(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> str:
    """Write tokens, scores, types, merges, special tokens, chat template; return the kind."""
    if (model_dir / "tokenizer.model").is_file():
        kind, tokens = "llama", list(gguf.SentencePieceVocab(model_dir).all_tokens())
        space_prefix = _sentencepiece_adds_space_prefix(model_dir / "tokenizer.model")
        pre = "default"
    else:
        tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text("utf-8"))
        model = tokenizer_json.get("model", {})
        if model.get("type") != "BPE":
            raise UnsupportedArchitectureError(
                f"{model_dir}/tokenizer.json holds a {model.get('type')} model; supported: "
                "a SentencePiece tokenizer.model, or a BPE tokenizer.json"
            )
        if model.get("byte_fallback"):
            kind, tokens = "llama", _sentencepiece_style_tokens(tokenizer_json)
            space_prefix = _tokenizer_json_adds_space_prefix(tokenizer_json)
            pre = "default"
        else:
            kind, tokens = "gpt2", list(gguf.BpeVocab(model_dir).all_tokens())
            space_prefix = False
            pre = _byte_level_pretokenizer(tokenizer_json, model_dir)

    if len(tokens) > vocab_size:
        raise UnsupportedArchitectureError(
            f"the tokenizer has {len(tokens)} tokens but config.json's vocab_size is {vocab_size}"
        )
    # Checkpoints often pad the embeddings past the tokenizer; llama.cpp needs a token per row.
    tokens += [(f"[PAD{i}]".encode(), -1000.0, gguf.TokenType.UNUSED)
               for i in range(len(tokens), vocab_size)]  # fmt: skip

    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([text for text, _, _ in tokens])
    writer.add_token_scores([score for _, score, _ in tokens])
    writer.add_token_types([int(kind_) for _, _, kind_ in tokens])
    if kind == "llama":
        writer.add_add_space_prefix(space_prefix)
    # gguf-py warns about the pair template of tokenizer.json's post-processor, which GGUF has no
    # field for; the single-sequence BOS/EOS settings it does need are still read.
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    special = gguf.SpecialVocab(model_dir, load_merges=kind == "gpt2", n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    return (
        "sentencepiece" if (model_dir / "tokenizer.model").is_file() else f"tokenizer.json ({kind})"
    )


def _sentencepiece_adds_space_prefix(model_file: Path) -> bool:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    return bool(proto.normalizer_spec.add_dummy_prefix)


def _sentencepiece_style_tokens(tokenizer_json: dict[str, Any]) -> list[Token]:
    vocab: dict[str, int] = tokenizer_json["model"]["vocab"]
    added = {item["id"]: item for item in tokenizer_json.get("added_tokens", [])}
    size = max([*vocab.values(), *added]) + 1
    by_id: dict[int, str] = {i: text for text, i in vocab.items()}
    by_id.update({i: item["content"] for i, item in added.items()})
    missing = [i for i in range(size) if i not in by_id]
    if missing:
        raise UnsupportedArchitectureError(
            f"tokenizer.json leaves token ids unassigned: {missing[:5]}"
        )

    # A merge's rank is its priority: llama.cpp's SentencePiece tokenizer merges the pair whose
    # result scores highest, so the earliest merge gets the highest score.
    merge_rank: dict[str, int] = {}
    for rank, merge in enumerate(tokenizer_json["model"].get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        merge_rank.setdefault(left + right, rank)
    unk = tokenizer_json["model"].get("unk_token")

    tokens: list[Token] = []
    for i in range(size):
        text = by_id[i]
        if i in added:
            kind = (
                gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
            )
            if text == unk:
                kind = gguf.TokenType.UNKNOWN
            score = 0.0
        elif BYTE_TOKEN.fullmatch(text):
            kind, score = gguf.TokenType.BYTE, 0.0
        else:
            kind = gguf.TokenType.UNKNOWN if text == unk else gguf.TokenType.NORMAL
            score = -float(merge_rank[text]) if text in merge_rank else 0.0
        tokens.append((text.encode("utf-8"), score, kind))
    return tokens


def _tokenizer_json_adds_space_prefix(tokenizer_json: dict[str, Any]) -> bool:
    """A leading '▁' comes from a Prepend normalizer (legacy) or a Metaspace pre-tokenizer."""
    parts = [tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")]
    stack = [part for part in parts if part]
    while stack:
        part = stack.pop()
        if part.get("type") == "Prepend" and part.get("prepend") == "▁":
            return True
        if part.get("type") == "Metaspace" and part.get("prepend_scheme", "always") != "never":
            return True
        stack.extend(part.get("normalizers", []) + part.get("pretokenizers", []))
    return False


def _byte_level_pretokenizer(tokenizer_json: dict[str, Any], model_dir: Path) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    regexes = [
        step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"
    ]
    if regexes == [LLAMA3_PRETOKENIZER]:
        return "llama-bpe"
    raise UnsupportedArchitectureError(
        f"{model_dir}/tokenizer.json: byte-level BPE with a pre-tokenizer llama.cpp has no name "
        "for; supported: GPT-2's ByteLevel and Llama 3's regex"
    )
