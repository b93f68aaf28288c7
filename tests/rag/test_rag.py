"""RAG: passages fitted to the budget (the lowest-ranked dropped first and reported, the best cut only when
alone it does not fit), the retrieved passages in the prompt, citations read back, and `llmlab rag`."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("faiss", reason="pip install 'llmlab[augment]'")

from llmlab.checkpoint.folder import save_checkpoint  # noqa: E402
from llmlab.errors import LlmlabError  # noqa: E402
from llmlab.generation.config import GenerationConfig  # noqa: E402
from llmlab.generation.generator import Generator  # noqa: E402
from llmlab.rag.answer import answer_questions, cited_passages  # noqa: E402
from llmlab.rag.prompt import Passage, fit_prompt, render  # noqa: E402
from llmlab.retrieval import Index, build_index, load_embedder  # noqa: E402
from llmlab.retrieval.chunking import ChunkSettings  # noqa: E402
from llmlab.tokenizer import train_tokenizer  # noqa: E402
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model  # noqa: E402
from tests.retrieval.conftest import DOCUMENTS, WORDS, save_encoder  # noqa: E402

PASSAGES = [Passage("alpha " * 10, "a.txt"), Passage("beta " * 10, "b.txt"), Passage("gamma " * 10, "c.txt")]


def test_the_lowest_ranked_passages_are_dropped_first_and_reported():
    question = "Which letter?"
    full = len(render(question, PASSAGES))
    prompt = fit_prompt(question, PASSAGES, len, full)  # characters as tokens: exact arithmetic
    assert prompt.passages == PASSAGES and not prompt.dropped and prompt.tokens == full
    two = fit_prompt(question, PASSAGES, len, full - 1)
    assert two.passages == PASSAGES[:2] and two.dropped == PASSAGES[2:] and "1 of 3 passages" in two.notes[0]
    assert "[2] (b.txt) beta" in two.text and "gamma" not in two.text and two.text.endswith("Answer:")
    bare = len(render(question, []))
    cut = fit_prompt(question, PASSAGES, len, bare + 30)
    assert len(cut.passages) == 1 and cut.passages[0].text.startswith("alpha") and cut.tokens <= bare + 30
    assert "cut from 60" in cut.notes[0] and cut.dropped == PASSAGES[1:]
    with pytest.raises(LlmlabError, match="question and instruction alone"):
        fit_prompt(question, PASSAGES, len, bare - 1)


def test_citations_are_read_only_for_passages_in_the_prompt():
    assert cited_passages("As [2] and [1] say, and [2] again; not [7] or [0].", 3) == [1, 2]
    assert cited_passages("no citation", 3) == []


@pytest.fixture(scope="module")
def rag_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag")
    for name, text in DOCUMENTS.items():
        (root / "docs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "docs" / name).write_text(text)
    encoder_tok = train_tokenizer([WORDS * 10], kind="bpe", vocab_size=300, family="encoder")
    save_encoder(root / "encoder", encoder_tok, seed=0)
    build_index([root / "docs"], load_embedder(root / "encoder"), root / "index", ChunkSettings(24, 6), kind="exact")
    tok = train_tokenizer([SAMPLE_TEXT + WORDS], kind="bpe", vocab_size=300, family="decoder")
    save_checkpoint(root / "decoder", tiny_model("llama", vocab_size=tok.vocab_size, block_size=512), tok)
    return root


def test_the_retrieved_passages_are_the_prompts_and_no_index_is_the_baseline(rag_setup):
    from llmlab.load import load_checkpoint

    ckpt = load_checkpoint(str(rag_setup / "decoder"))
    index = Index.load(rag_setup / "index")
    generator = Generator(ckpt.model, ckpt.tokenizer, compile="off")
    config = GenerationConfig(max_new_tokens=8, greedy=True)
    questions = ["What is a quagga?", "What did traders sell?"]
    answers = answer_questions(generator, index, questions, config, k=2, mode="bm25")
    for question, answer in zip(questions, answers):
        hits = index.search(question, k=2, mode="bm25")
        assert [p.text for p in answer.prompt.passages] == [h.text for h in hits]
        assert f"Question: {question}" in answer.prompt.text and answer.finish_reason == "length"
    assert "zebra.txt" in answers[0].prompt.passages[0].source and "markets" in answers[1].prompt.passages[0].source
    baseline = answer_questions(generator, None, questions[:1], config)
    assert not baseline.pop().prompt.passages
    assert not answer_questions(generator, index, questions[:1], config, k=0).pop().prompt.passages
    with pytest.raises(LlmlabError, match="once"):
        answer_questions(generator, index, questions, GenerationConfig(max_new_tokens=4, num_samples=2))


def test_rag_command(rag_setup, capsys):
    args = ["rag", rag_setup / "decoder", "--index", rag_setup / "index", "--question", "What is a quagga?",
            "-k", "2", "--mode", "bm25", "--max-new-tokens", "6", "--greedy"]  # fmt: skip
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["question"] == "What is a quagga?" and len(record["passages"]) == 2
    assert record["passages"][0]["source"].endswith("zebra.txt")
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and out.startswith("Q: What is a quagga?\nA: ") and "[1] " in out
    code, _, err = run_cli(capsys, "rag", rag_setup / "decoder", "--index", rag_setup / "nowhere", "--question", "x")
    assert_one_line_error(code, err, "nowhere")
    code, _, err = run_cli(capsys, "rag", rag_setup / "decoder", "--index", rag_setup / "index")
    assert_one_line_error(code, err, "no question")
