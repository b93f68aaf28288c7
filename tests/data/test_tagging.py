"""CoNLL and JSONL tagging data: sentences, their BIO tag set, and one-line errors that name the place."""

import pytest

from llmlab.data.tagging import TaggedSentence, check_bio, read_conll, tagged_records
from llmlab.errors import LlmlabError

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_conll_columns_give_sentences_with_the_last_column_as_tag(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL)
    sentences = read_conll(path)
    assert sentences == [
        TaggedSentence(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
        TaggedSentence(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    ]
    assert check_bio(sentences, str(path)) == ["O", "B-MISC", "B-ORG", "B-PER", "I-PER"]


def test_a_malformed_conll_line_is_named_by_its_number(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(LlmlabError, match=r"bad.conll:2: 'rejects' has no tag column"):
        read_conll(path)


def test_jsonl_records_and_non_bio_tags_are_checked():
    good = tagged_records([{"tokens": ["John", "lives"], "tags": ["B-PER", "O"]}], "t.jsonl")
    assert good == [TaggedSentence(["John", "lives"], ["B-PER", "O"])]
    with pytest.raises(LlmlabError, match="record 1 has 2 tokens but 1 tags"):
        tagged_records([{"tokens": ["John", "lives"], "tags": ["B-PER"]}], "t.jsonl")
    with pytest.raises(LlmlabError, match="record 2 lacks"):
        tagged_records([{"tokens": [], "tags": []}, {"text": "x"}], "t.jsonl")
    with pytest.raises(LlmlabError, match="'PER', which is not BIO"):
        check_bio([TaggedSentence(["John"], ["PER"])], "t.jsonl")
    with pytest.raises(LlmlabError, match="'B-', which is not BIO"):
        check_bio([TaggedSentence(["John"], ["B-"])], "t.jsonl")
