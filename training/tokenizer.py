"""Train a tokenizer of the kind Mistral and Bielik ship: SentencePiece BPE with byte fallback.

The result is a directory with `tokenizer.model` (the SentencePiece model, which llama.cpp's and
our GGUF conversion read) and the Hugging Face files (`tokenizer.json`, `tokenizer_config.json`)
that transformers loads, both describing the same vocabulary.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

# Mistral's instruction format: [INST] user [/INST] answer</s>; a system prompt, when present, is
# prepended to the first user turn, as Mistral's own template does.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' "
    "else none %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system + '\\n\\n' if system and loop.first else '') + message['content']"
    " + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


class TokenizerTrainingError(ValueError):
    """The text cannot give the tokenizer that was asked for (e.g. too small a vocabulary)."""


SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def train_sentencepiece(texts: Iterable[str], out_dir: Path, vocab_size: int = 4096) -> Path:
    """Train on `texts` and write the tokenizer directory `out_dir` (created, must not exist)."""
    import sentencepiece
    from transformers import AutoTokenizer

    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    if not lines:
        raise TokenizerTrainingError("no text to train a tokenizer on")
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_prefix=str(staging / "tokenizer"),
                vocab_size=vocab_size,
                model_type="bpe",
                byte_fallback=True,  # every byte has a token: no <unk> for unseen characters
                split_digits=True,
                character_coverage=0.9999,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=-1,
                num_threads=1,  # one thread keeps the merges, and so the test fixture, reproducible
                minloglevel=2,
            )
        except RuntimeError as err:
            # SentencePiece reports a vocabulary the text cannot fill as a RuntimeError.
            raise TokenizerTrainingError(str(err).split("] ")[-1]) from None
        config = {
            "tokenizer_class": "LlamaTokenizer",
            **SPECIAL_TOKENS,
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": False,
            "chat_template": MISTRAL_CHAT_TEMPLATE,
        }
        (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=1), "utf-8")
        # transformers converts the SentencePiece model into its fast tokenizer.json here.
        tokenizer = AutoTokenizer.from_pretrained(staging, local_files_only=True)
        out_dir.mkdir(parents=True)
        tokenizer.save_pretrained(out_dir)
        shutil.copy(staging / "tokenizer.model", out_dir / "tokenizer.model")
    return out_dir
