"""Embedded data and the byte-level tokenizer."""

import pytest
from transformers import AutoTokenizer

from hf_seqplugins.app.data import byte_tokenizer, is_byte_tokenizer, language_modeling_dataset, pydoc_corpus


def test_byte_tokenizer_round_trips_utf8_and_reloads_in_plain_transformers(tmp_path):
    tokenizer = byte_tokenizer()
    text = "naïve café — 42\n\t\x00"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == [b + 3 for b in text.encode("utf-8")] and len(tokenizer) == 259
    assert tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids and is_byte_tokenizer(reloaded)
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (0, 1, 2)


def test_byte_tokenizer_adds_no_end_of_sequence_to_a_prompt():
    """A causal-LM prompt must not end in EOS: generation would continue after a token never seen mid-text."""
    tokenizer = byte_tokenizer()
    assert tokenizer("The function ")["input_ids"] == tokenizer("The function ", add_special_tokens=False)["input_ids"]
    assert tokenizer.eos_token_id not in tokenizer("The function ")["input_ids"]


def test_language_modeling_blocks_hold_out_the_end_of_the_text():
    tokenizer = byte_tokenizer()
    data = language_modeling_dataset(tokenizer, block_size=64, test_fraction=0.1)
    assert len(pydoc_corpus()) > 400_000
    assert all(len(row) == 64 for row in data["train"]["input_ids"][:5])
    assert data["train"][0]["input_ids"] == data["train"][0]["labels"]
    assert 0.09 < len(data["test"]) / (len(data["train"]) + len(data["test"])) < 0.11
    tail = tokenizer(pydoc_corpus(), add_special_tokens=False)["input_ids"]
    last = data["test"][-1]["input_ids"]
    assert tail[len(tail) - len(tail) % 64 - 64 : len(tail) - len(tail) % 64] == last


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="block_size"):
        language_modeling_dataset(byte_tokenizer(), block_size=1)
    with pytest.raises(ValueError, match="too few"):
        language_modeling_dataset(byte_tokenizer(), text="short", block_size=4)
