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
    _add_declared_tokens(tokens, model_dir, sentencepiece=kind == "llama")

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
    if (turn_end := _turn_end(tokens, special.chat_template)) is not None:
        special.special_token_ids["eot"] = turn_end
    special.add_to_gguf(writer, quiet=True)
    return (
        "sentencepiece" if (model_dir / "tokenizer.model").is_file() else f"tokenizer.json ({kind})"
    )


def _add_declared_tokens(tokens: list[Token], model_dir: Path, sentencepiece: bool) -> None:
    """Write the tokens transformers adds on top of the base vocabulary into `tokens`, in place.

    They are declared in tokenizer_config.json's `added_tokens_decoder` (how ChatML models such as
    Bielik v2 ship `<|im_start|>`/`<|im_end|>`) and in tokenizer.json's `added_tokens`; a
    SentencePiece `tokenizer.model` knows none of them. As in llama.cpp's converter, a special
    token becomes CONTROL (llama.cpp parses it only where asked to, and never prints it) and any
    other added token USER_DEFINED (always matched in raw text, printed verbatim). A token the base
    vocabulary already types as unknown, control or byte (`<unk>`, `<s>`, `<0x0A>`) keeps its type.
    """
    declared: dict[int, dict[str, Any]] = {}
    tokenizer_json = model_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        for item in json.loads(tokenizer_json.read_text("utf-8")).get("added_tokens", []):
            declared[int(item["id"])] = item
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        decoder = json.loads(config.read_text("utf-8")).get("added_tokens_decoder", {})
        declared.update({int(i): item for i, item in decoder.items()})

    keep = (gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.BYTE)
    for i, item in sorted(declared.items()):
        text = item["content"]
        if i >= len(tokens):
            raise UnsupportedArchitectureError(
                f"{model_dir}: the tokenizer adds {text!r} as token {i}, but config.json's "
                f"vocab_size is {len(tokens)}, so the model has no embedding for it"
            )
        if tokens[i][2] in keep and tokens[i][0] == text.encode("utf-8"):
            continue
        if item.get("special"):
            kind = gguf.TokenType.CONTROL
        else:
            kind = gguf.TokenType.USER_DEFINED
            if sentencepiece:
                # llama.cpp matches user-defined tokens in the raw text, before spaces become
                # '▁', and prints them verbatim: their text must hold real spaces.
                text = text.replace("▁", " ")
        tokens[i] = (text.encode("utf-8"), -1000.0, kind)


# Tokens chat templates close a turn with: ChatML's (Bielik v2, Qwen) and Llama 3's.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>")


def _turn_end(tokens: list[Token], chat_template: str | None) -> int | None:
    """The id of the control token the chat template ends each turn with, if it uses one.

    llama.cpp stops generating at EOS and at EOT; a ChatML model answers with `<|im_end|>`, which
    is then its EOT whatever the tokenizer's EOS is.
    """
    if not chat_template:
        return None
    control = {text: i for i, (text, _, kind) in enumerate(tokens)
               if kind == gguf.TokenType.CONTROL}  # fmt: skip
    for text in TURN_END_TOKENS:
        if text in chat_template and text.encode() in control:
            return control[text.encode()]
    return None


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
