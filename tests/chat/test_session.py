"""`llmlab chat`: the conversation is rendered with the template, kept within the context by dropping
the oldest exchanges (the system message stays, the user is told), and commands work from a pipe."""

from __future__ import annotations

import io

import pytest

from llmlab.chat.session import ChatSession
from llmlab.checkpoint.folder import save_checkpoint
from llmlab.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.tokenizer import EOS, train_tokenizer
from tests.helpers import SAMPLE_TEXT, run_cli, tiny_model

TOK = train_tokenizer([SAMPLE_TEXT + "<|>?!"], kind="char")


def session(block: int = 64, max_new: int = 4) -> ChatSession:
    model = tiny_model("llama", vocab_size=TOK.vocab_size, block_size=block)
    generation = GenerationConfig(greedy=True, max_new_tokens=max_new)
    return ChatSession(Generator(model, TOK), ChatTemplate(DEFAULT_TEMPLATE, EOS), generation, system="be kind")


def test_the_prompt_is_the_rendered_conversation_with_the_generation_prompt():
    chat = session(block=256)
    reply = "".join(chat.send("hi"))
    assert chat.history == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply.strip()}]
    chat.history.append({"role": "user", "content": "again"})
    assert chat.prompt() == (f"<|system|>\nbe kind\n<|user|>\nhi\n<|assistant|>\n{reply.strip()}{EOS}\n"
                             "<|user|>\nagain\n<|assistant|>\n")  # fmt: skip


def test_old_exchanges_are_dropped_to_fit_and_the_system_message_stays():
    chat = session(block=64, max_new=4)  # 60 tokens of prompt at most
    for text in ("first one", "second", "third"):
        list(chat.send(text))
    assert any("dropped" in note for note in chat.notes)
    assert chat.history[0] == {"role": "user", "content": "third"}  # whole exchanges went, oldest first
    chat.history.append({"role": "user", "content": "4th"})
    prompt = chat.prompt()
    assert prompt.startswith("<|system|>\nbe kind\n<|user|>\n") and prompt.endswith("4th\n<|assistant|>\n")
    assert len(TOK.encode(prompt)) <= 60
    with pytest.raises(LlmlabError, match="the message alone does not fit"):
        list(chat.send("x" * 100))


def test_the_command_reads_a_piped_conversation(tmp_path, capsys, monkeypatch):
    save_checkpoint(tmp_path / "m", tiny_model("llama", vocab_size=TOK.vocab_size, block_size=128), TOK)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/system terse\n/reset\n/nope\nbye\n/exit\nnever\n"))
    code, out, err = run_cli(capsys, "chat", tmp_path / "m", "--greedy", "--max-new-tokens", "3", "--device", "cpu")
    assert code == 0
    assert out.count("assistant> ") == 2  # hello and bye; nothing after /exit
    assert "(system message set)" in err and "(conversation reset)" in err and "unknown command /nope" in err


def test_a_soft_prompt_takes_its_positions_from_the_history_budget():
    from llmlab.model.soft_prompt import add_soft_prompt

    chat = session(block=96, max_new=4)
    add_soft_prompt(chat.generator.model, 30)
    for text in ("first one", "second", "third"):
        list(chat.send(text))  # the generator would refuse a prompt the session thought fitted
    assert any("dropped" in note for note in chat.notes)
    assert len(TOK.encode(chat.prompt())) <= 96 - 30 - 4
