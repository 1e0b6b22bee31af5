"""A ChatML model in GGUF, as Bielik v2 ships one: `<|im_start|>`/`<|im_end|>` added tokens.

The fixture adds the ChatML tokens to the tiny SentencePiece tokenizer through transformers (so a
`tokenizer.model` knows nothing of them, as in Bielik v2) and trains a very small Mistral for a few
seconds to answer every question with the same short sentence and `<|im_end|>`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from calibration_data import load
from tests.cli import invoke

CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONTROL = ("<|im_start|>", "<|im_end|>")
USER_DEFINED = "<tool_call>"  # Qwen ships it as an added token that is not special
ANSWER = "Tak, oczywiście."


def questions(n: int) -> list[str]:
    """Short Polish and English lines from the eval split, as user messages."""
    texts = load("pl-en", split="eval").texts
    lines = [line.strip()[:60] for text in texts for line in text.splitlines() if line.strip()]
    return lines[:n]


def chat(question: str, answer: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": question}]
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


@pytest.fixture(scope="module")
def chatml_model(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    """A 2-layer, 64-wide Mistral with a ChatML tokenizer, trained to answer ANSWER<|im_end|>."""
    from tokenizers.pre_tokenizers import Metaspace
    from transformers import MistralConfig, MistralForCausalLM

    out = tmp_path_factory.mktemp("chatml") / "tiny-chatml"
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(CONTROL)})
    tokenizer.add_tokens([USER_DEFINED])
    tokenizer.chat_template = CHATML_TEMPLATE
    # Mistral's tokenizer, which Bielik v2 keeps, puts '▁' before the text after every special
    # token (transformers' "legacy" SentencePiece behaviour), and so does llama.cpp's SentencePiece
    # tokenizer, which has no other mode. The fixture's tokenizer is made to do the same.
    tokenizer.backend_tokenizer.pre_tokenizer = Metaspace(prepend_scheme="always", split=False)

    texts = [tokenizer.apply_chat_template(chat(q, ANSWER), tokenize=False) for q in questions(32)]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = labels[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = MistralForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Bielik v2 ships tokenizer.model and declares its ChatML tokens only in added_tokens_decoder.
    shutil.copy2(tiny_tokenizer / "tokenizer.model", out / "tokenizer.model")
    (out / "added_tokens.json").unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def chatml_gguf(chatml_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chatml-gguf")
    result = invoke("export", str(chatml_model), "--variant", "F16", "--out", str(out))
    assert result.returncode == 0, result.stderr
    [model_file] = (out / f"{chatml_model.name}-GGUF-F16").glob("*.gguf")
    return model_file


def test_added_tokens_keep_their_text_and_type(chatml_model: Path, chatml_gguf: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chatml_model)
    reader = gguf.GGUFReader(chatml_gguf)
    texts = reader.get_field(gguf.Keys.Tokenizer.LIST).contents()
    types = reader.get_field(gguf.Keys.Tokenizer.TOKEN_TYPE).contents()
    for text in CONTROL:
        token = tokenizer.convert_tokens_to_ids(text)
        assert (texts[token], types[token]) == (text, gguf.TokenType.CONTROL), text
    token = tokenizer.convert_tokens_to_ids(USER_DEFINED)
    assert (texts[token], types[token]) == (USER_DEFINED, gguf.TokenType.USER_DEFINED)


def test_llama_cpp_tokenizes_a_chat_as_transformers_does(
    chatml_model: Path, chatml_gguf: Path
) -> None:
    from llama_cpp import Llama

    tokenizer = AutoTokenizer.from_pretrained(chatml_model)
    vocab = Llama(str(chatml_gguf), vocab_only=True, verbose=False)
    # llama.cpp puts '▁' before the text after any added token even where that text starts with
    # a space, which transformers does not; the user-defined token is followed by a letter here.
    for question in [*questions(4), f"Wywołaj narzędzie: {USER_DEFINED}pogoda"]:
        messages = [*chat("Cześć!", "Dzień dobry."), *chat(question)]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert vocab.tokenize(text.encode(), add_bos=False, special=True) == expected, text


def test_im_end_ends_the_turn(chatml_model: Path, chatml_gguf: Path) -> None:
    import llama_cpp

    tokenizer = AutoTokenizer.from_pretrained(chatml_model)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    reader = gguf.GGUFReader(chatml_gguf)
    assert reader.get_field(gguf.Keys.Tokenizer.EOT_ID).contents() == im_end
    # The tokenizer's own EOS (</s>, which ends a document) stays what transformers says it is.
    assert reader.get_field(gguf.Keys.Tokenizer.EOS_ID).contents() == tokenizer.eos_token_id

    llama = llama_cpp.Llama(str(chatml_gguf), n_ctx=256, verbose=False)
    vocab = llama._model.vocab
    assert llama_cpp.llama_vocab_eot(vocab) == im_end
    assert llama_cpp.llama_vocab_is_eog(vocab, im_end)
    assert llama_cpp.llama_vocab_is_eog(vocab, tokenizer.eos_token_id)


def test_generation_stops_at_im_end(chatml_model: Path, chatml_gguf: Path) -> None:
    """The trained answer ends with <|im_end|> in torch; llama.cpp must stop there too."""
    import llama_cpp

    tokenizer = AutoTokenizer.from_pretrained(chatml_model)
    model = AutoModelForCausalLM.from_pretrained(chatml_model, dtype=torch.float32)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    llama = llama_cpp.Llama(str(chatml_gguf), n_ctx=256, verbose=False)
    for question in questions(3):
        prompt = tokenizer.apply_chat_template(
            chat(question), tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            greedy = model.generate(
                torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=im_end
            )[0, len(ids) :].tolist()
        # The torch model answers and closes its turn (the fixture's training took).
        assert greedy[-1] == im_end and len(greedy) < 16, tokenizer.decode(greedy)
        result = llama.create_completion(ids, max_tokens=16, temperature=0.0)
        choice = result["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["text"] == tokenizer.decode(greedy[:-1]) == ANSWER
        assert result["usage"]["completion_tokens"] == len(greedy) - 1
