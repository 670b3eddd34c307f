"""The SOLAR-Instruct chat template: shipped byte for byte, rendered exactly."""

from pathlib import Path

import pytest
from instruct_fixtures import make_tokenizer

from dus.errors import InputError
from dus.instruct.template import builtin_template, render, resolve_template, set_chat_template

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{% if message['content']%}"
    "{{'### System:\\n' + message['content']+'\\n\\n'}}{% endif %}{% elif message['role'] == 'user' %}"
    "{{'### User:\\n' + message['content']+'\\n\\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'### Assistant:\\n'  + message['content']}}{% endif %}{% if loop.last and add_generation_prompt %}"
    "{{ '### Assistant:\\n' }}{% endif %}{% endfor %}"
)


def test_shipped_template_is_the_published_one():
    assert builtin_template("solar") == PUBLISHED
    package_copy = (REPO / "dus/instruct/templates/solar.jinja").read_bytes()
    assert (REPO / "configs/chat_templates/solar.jinja").read_bytes() == package_copy
    assert not package_copy.endswith(b"\n")


def test_user_prompt_renders_byte_for_byte(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "### User:\nHi\n\n### Assistant:\n"


def test_system_and_assistant_turns(tok):
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ]
    assert tok.apply_chat_template(chat, tokenize=False) == (
        "### System:\nBe brief.\n\n### User:\nHello, how are you?\n\n### Assistant:\n"
        "I'm doing great. How can I help you today?### User:\nI'd like to show off how chat templating works!\n\n"
    )
    empty_system = [{"role": "system", "content": ""}, {"role": "user", "content": "x"}]
    assert tok.apply_chat_template(empty_system, tokenize=False) == "### User:\nx\n\n"


def test_saved_tokenizer_keeps_it(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == PUBLISHED


def test_solar_is_the_default_only_without_a_template(tmp_path):
    t = make_tokenizer()
    set_chat_template(t, None)
    assert t.chat_template == PUBLISHED
    t.chat_template = "{{ messages[0]['content'] }}"
    set_chat_template(t, None)
    assert t.chat_template == "{{ messages[0]['content'] }}"
    set_chat_template(t, "solar")
    assert t.chat_template == PUBLISHED
    custom = tmp_path / "mine.jinja"
    custom.write_text("{% for m in messages %}<{{ m['content'] }}>{% endfor %}\n")
    assert resolve_template(str(custom)) == "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    with pytest.raises(InputError):
        resolve_template(str(tmp_path / "missing.jinja"))


def test_render_tokenizes_to_one_bos():
    t = make_tokenizer()
    t.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    text = render(t, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == "hi"
    assert t(text)["input_ids"].count(t.bos_token_id) == 1
