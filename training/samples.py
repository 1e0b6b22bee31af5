"""Training samples: packed pretraining blocks and masked, weighted SFT conversations.

Both become the same three arrays per sample, stored memory-mapped under the run directory so a
large corpus never sits in RAM:

- `inputs` (seq_len,) token ids fed to the model;
- `labels` (seq_len,) the token each position must predict, already shifted, or IGNORE_INDEX;
- `weights` () the sample's quality weight (1.0 for pretraining).

Pretraining tokenizes each source's documents, joins them with EOS into one stream per source, and
cuts the stream into blocks of seq_len + 1 tokens (a block's inputs are its first seq_len tokens,
its labels the last seq_len). Sources are mixed by ratio: each gets round(ratio * total) blocks,
repeating a small source's blocks when its share asks for more than it has, and the blocks are
shuffled with the recipe's seed.

SFT renders each conversation with the tokenizer's chat template and learns only the assistant's
content: every other token (BOS, system and user turns, the [INST] or <|im_start|> markers) gets
IGNORE_INDEX. The special token that closes an assistant turn (EOS, <|im_end|>, <|eot_id|>) is
learned too, as part of the reply: without it the model would never learn to stop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.loss import IGNORE_INDEX

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """The data gives no usable samples, or a record is malformed (which one, and why)."""


@dataclass(frozen=True)
class Samples:
    """Memory-mapped samples; index i is (inputs[i], labels[i], weights[i])."""

    inputs: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    @classmethod
    def open(cls, directory: Path) -> Samples:
        arrays = {
            name: np.load(directory / f"{name}.npy", mmap_mode="r")
            for name in ("inputs", "labels", "weights")
        }
        return cls(**arrays)


def write_samples(
    directory: Path, rows: Iterable[tuple[np.ndarray, np.ndarray, float]], count: int, seq_len: int
) -> Samples:
    """Stream `count` rows into memory-mapped .npy files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    inputs = np.lib.format.open_memmap(directory / "inputs.npy", "w+", np.int32, (count, seq_len))
    labels = np.lib.format.open_memmap(directory / "labels.npy", "w+", np.int32, (count, seq_len))
    weights = np.lib.format.open_memmap(directory / "weights.npy", "w+", np.float32, (count,))
    for i, (row_inputs, row_labels, weight) in enumerate(rows):
        inputs[i], labels[i], weights[i] = row_inputs, row_labels, weight
    for array in (inputs, labels, weights):
        array.flush()
    return Samples.open(directory)


# Pretraining ---------------------------------------------------------------------------------


def token_stream(tokenizer: Any, documents: Iterable[str], path: Path) -> np.memmap:
    """Documents as one memory-mapped token stream: BOS doc EOS BOS doc EOS ..."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    with path.open("wb") as out:
        for document in documents:
            ids = tokenizer(document, add_special_tokens=False)["input_ids"]
            if ids:
                np.asarray(bos + ids + [tokenizer.eos_token_id], np.int32).tofile(out)
    return np.memmap(path, np.int32, "r")


def pack_pretraining(
    tokenizer: Any,
    sources: Sequence[tuple[str, Sequence[str]]],
    ratios: Sequence[float],
    seq_len: int,
    directory: Path,
    seed: int,
) -> Samples:
    """Blocks of seq_len + 1 tokens from every source, mixed by `ratios`, shuffled by `seed`."""
    directory.mkdir(parents=True, exist_ok=True)
    streams = [
        token_stream(tokenizer, texts, directory / f"stream{i}.bin")
        for i, (_, texts) in enumerate(sources)
    ]
    available = [len(stream) // (seq_len + 1) for stream in streams]
    for (name, _), blocks, stream in zip(sources, available, streams, strict=True):
        if blocks == 0:
            raise DataError(
                f"{name}: {len(stream)} tokens, fewer than one block of {seq_len + 1}; "
                "give more text or a smaller seq_len"
            )
    shares = np.asarray(ratios or [1.0] * len(sources), float)
    counts = np.rint(shares / shares.sum() * sum(available)).astype(int)
    order = [(s, b % available[s]) for s, count in enumerate(counts) for b in range(count)]
    np.random.default_rng(seed).shuffle(order)

    def rows() -> Iterable[tuple[np.ndarray, np.ndarray, float]]:
        for source, block in order:
            tokens = streams[source][block * (seq_len + 1) : (block + 1) * (seq_len + 1)]
            yield tokens[:-1], tokens[1:], 1.0

    samples = write_samples(directory, rows(), len(order), seq_len)
    meta = {
        "sources": [name for name, _ in sources],
        "tokens": [len(stream) for stream in streams],
        "blocks_available": available,
        "blocks_used": counts.tolist(),
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", "utf-8")
    for i in range(len(streams)):
        (directory / f"stream{i}.bin").unlink()
    return samples


# SFT -----------------------------------------------------------------------------------------


def check_record(record: dict[str, Any], quality_weights: dict[str, float], where: str) -> float:
    """The record's weight, or DataError naming the record and what is wrong with it."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: no 'messages' list")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"{where}: every message needs a role in {ROLES}, got {message!r}")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: a {message['role']} message has no text content")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError(f"{where}: no assistant turn, so nothing to learn")
    quality = record.get("quality", "high")
    if quality not in quality_weights:
        raise DataError(
            f"{where}: quality {quality!r} has no weight; known: {', '.join(quality_weights)}"
        )
    weight = quality_weights[quality]
    if not 0 < weight <= 1:
        raise DataError(f"{where}: quality weight {weight} of {quality!r} is not in (0, 1]")
    return weight


# Stands in for one assistant message's content while the template renders; private-use
# characters, so no real conversation or template writes it.
PLACEHOLDER = "\ue000answer\ue001"


def render_conversation(
    tokenizer: Any, messages: list[dict[str, str]]
) -> tuple[list[int], list[bool]]:
    """Token ids of the chat-rendered conversation, and which of them are learned.

    Learned are the tokens of each assistant message's content and the special token that closes
    its turn (EOS, <|im_end|>, <|eot_id|>): without that one the model never learns to stop.

    Where a content lies in the text is asked of the template itself: the conversation is rendered
    again with that one message's content replaced by a placeholder, and the content is what
    stands where the placeholder stood. Searching the text for the content would be fooled by an
    answer that also occurs earlier, in a marker ("T" in " [/INST]") or in a user's message.
    """
    text = render(tokenizer, messages)
    spans = [
        content_span(tokenizer, messages, i, text)
        for i, message in enumerate(messages)
        if message["role"] == "assistant"
    ]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    closing = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    closing |= set(tokenizer.all_special_ids)
    learned = [False] * len(ids)
    for start, end in spans:
        # Overlapping, not starting inside: SentencePiece joins the space a template writes
        # before the content to its first word (" T" is one token "▁T").
        for t, (begin, stop) in enumerate(offsets):
            learned[t] |= begin < end and stop > start
        # The closing token follows the content, after whitespace at most (Llama-2's " </s>").
        t = next((t for t, (begin, _) in enumerate(offsets) if begin >= end), len(ids))
        first = t
        while t < len(ids) and ids[t] not in closing and text[slice(*offsets[t])].isspace():
            t += 1
        if t < len(ids) and ids[t] in closing:
            learned[first : t + 1] = [True] * (t + 1 - first)
    return ids, learned


def render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation as the chat template writes it; a template's refusal is a DataError."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except TemplateError as err:  # e.g. raise_exception('roles must alternate')
        raise DataError(f"the chat template refuses the conversation: {err}") from None


def content_span(
    tokenizer: Any, messages: list[dict[str, str]], index: int, text: str
) -> tuple[int, int]:
    """Where messages[index]'s content lies in `text`, the rendered conversation (characters)."""
    marked = [dict(m, content=PLACEHOLDER) if i == index else m for i, m in enumerate(messages)]
    template = render(tokenizer, marked)
    before, found, after = template.partition(PLACEHOLDER)
    if (
        not found
        or PLACEHOLDER in after
        or not text.startswith(before)
        or not text.endswith(after)
        or len(before) + len(after) > len(text)
    ):
        raise DataError(
            "the chat template does not write each assistant message's content once, in a place "
            "that does not depend on it, so the learned tokens cannot be found"
        )
    return len(before), len(text) - len(after)


def pack_sft(
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    quality_weights: dict[str, float],
    seq_len: int,
    directory: Path,
) -> Samples:
    """One sample per conversation, padded to seq_len (longer ones are refused, by name)."""
    rows = []
    for index, record in enumerate(records):
        where = f"record {record.get('id', index)}"
        weight = check_record(record, quality_weights, where)
        try:
            ids, learned = render_conversation(tokenizer, record["messages"])
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
        if len(ids) > seq_len + 1:
            raise DataError(f"{where}: {len(ids)} tokens, longer than seq_len + 1 = {seq_len + 1}")
        labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, learned, strict=True)]
        pad = seq_len + 1 - len(ids)
        inputs = np.asarray(ids + [tokenizer.eos_token_id] * pad, np.int32)
        targets = np.asarray(labels + [IGNORE_INDEX] * pad, np.int32)
        rows.append((inputs[:-1], targets[1:], weight))
    if not rows:
        raise DataError("no SFT records to train on")
    return write_samples(directory, rows, len(rows), seq_len)
