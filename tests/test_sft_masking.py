"""SFT learns exactly each assistant message's content and the token that closes its turn.

Chat templates as the models we train ship them: Mistral's [INST] (our tokenizer's own), ChatML
(<|im_start|>/<|im_end|>, Bielik v2), Llama-3's headers (<|start_header_id|>, <|eot_id|>), and
Llama-2's, which writes a space on either side of the answer (" T </s>").
The answers are chosen to fool a text search: single characters that also occur in the markers,
answers repeated, an answer equal to the user's message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.samples import DataError, render_conversation
from training.tokenizer import MISTRAL_CHAT_TEMPLATE

CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}"
)
# name: (added special tokens, template, bos, eos, the token that ends an assistant turn)
TEMPLATES = {
    "mistral": ([], MISTRAL_CHAT_TEMPLATE, "<s>", "</s>", "</s>"),
    "chatml": (["<|im_start|>", "<|im_end|>"], CHATML_TEMPLATE, "<s>", "<|im_end|>", "<|im_end|>"),
    "llama3": (
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
         "<|eot_id|>"],
        LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
    ),
    # The learned " " before </s> is what the model must write before stopping.
    "llama2": ([], LLAMA2_TEMPLATE, "<s>", "</s>", " </s>"),
}  # fmt: skip
# Every character of every template's markers ("[/INST]", "</s>", "<|im_end|>", "assistant", ...).
MARKER_CHARACTERS = sorted(set("[INST] [/INST] </s> <|im_start|>assistant <|eot_id|>") - {" "})


@pytest.fixture(scope="module", params=list(TEMPLATES))
def chat_tokenizer(request: pytest.FixtureRequest, tiny_tokenizer: Path) -> tuple[Any, str]:
    """Our SentencePiece tokenizer with the template's special tokens added; and its turn end."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    added, template, bos, eos, end_of_turn = TEMPLATES[request.param]
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in added], True)
    tokenizer.bos_token, tokenizer.eos_token = bos, eos
    tokenizer.chat_template = template
    return tokenizer, end_of_turn


def learned_runs(tokenizer: Any, messages: list[dict[str, str]]) -> list[str]:
    """The learned tokens, decoded one contiguous run at a time."""
    ids, learned = render_conversation(tokenizer, messages)
    runs: list[list[int]] = []
    for t, (token, keep) in enumerate(zip(ids, learned, strict=True)):
        if keep:
            if t == 0 or not learned[t - 1]:
                runs.append([])
            runs[-1].append(token)
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("answer", MARKER_CHARACTERS)
def test_one_character_answers_are_learned_where_they_stand(
    chat_tokenizer: tuple[Any, str], answer: str
) -> None:
    tokenizer, end_of_turn = chat_tokenizer
    messages = [
        {"role": "system", "content": "Odpowiadaj jednym znakiem."},
        {"role": "user", "content": "Jaki znak?"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": answer},  # the user's message equals the answer
        {"role": "assistant", "content": answer},  # and the answer repeats
    ]
    assert learned_runs(tokenizer, messages) == [answer + end_of_turn] * 2


def test_repeated_answers_and_an_answer_equal_to_the_question(
    chat_tokenizer: tuple[Any, str],
) -> None:
    tokenizer, end_of_turn = chat_tokenizer
    messages = [
        {"role": "user", "content": "Warszawa"},
        {"role": "assistant", "content": "Warszawa"},
        {"role": "user", "content": "Powtórz."},
        {"role": "assistant", "content": "Warszawa"},
        {"role": "user", "content": "Jeszcze raz, z kropką."},
        {"role": "assistant", "content": "Warszawa."},
    ]
    expected = [m["content"] + end_of_turn for m in messages if m["role"] == "assistant"]
    assert learned_runs(tokenizer, messages) == expected


def test_a_template_that_writes_the_content_twice_is_refused(tiny_tokenizer: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + ' (' + m['content'] + ')' }}"
        "{% endfor %}"
    )
    messages = [{"role": "user", "content": "Hej"}, {"role": "assistant", "content": "Cześć"}]
    with pytest.raises(DataError, match="does not write each assistant message's content once"):
        render_conversation(tokenizer, messages)
