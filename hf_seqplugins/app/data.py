"""Embedded default data: real English text that ships with every CPython, and a byte-level tokenizer.

Nothing is downloaded. The tokenizer is transformers' `ByT5Tokenizer` without extra ids (UTF-8 bytes
shifted by 3 after pad=0, eos=1, unk=2; vocabulary 259): it needs no vocabulary file, saves as one
`tokenizer_config.json` next to the model, and loads with `AutoTokenizer` in plain transformers, so
`pipeline("text-generation", model=folder, trust_remote_code=True)` works on an exported folder.
"""
from __future__ import annotations

import pydoc_data.topics
from datasets import Dataset, DatasetDict
from transformers import ByT5Tokenizer, PreTrainedTokenizerBase


def byte_tokenizer() -> ByT5Tokenizer:
    """The byte-level tokenizer (vocabulary 259: pad 0, eos 1, unk 2, then the 256 byte values)."""
    return ByT5Tokenizer(extra_ids=0)


def pydoc_corpus() -> str:
    """Python's documentation topics (`pydoc_data.topics`, about 460 KB of English), in a fixed order."""
    return "\n\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))


def language_modeling_dataset(
    tokenizer: PreTrainedTokenizerBase, text: str | None = None, block_size: int = 128, test_fraction: float = 0.05
) -> DatasetDict:
    """`text` (default: `pydoc_corpus()`) tokenized once and cut into `block_size` blocks with `labels`;
    the last `test_fraction` of the blocks (held-out text, not a random sample) is the test split."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ids = tokenizer(text if text is not None else pydoc_corpus(), add_special_tokens=False)["input_ids"]
    blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]
    split = len(blocks) - max(1, int(test_fraction * len(blocks)))
    if split < 1:
        raise ValueError(f"the text gives {len(blocks)} blocks of {block_size} tokens: too few to split")

    def rows(part):
        return Dataset.from_dict({"input_ids": part, "labels": part})

    return DatasetDict(train=rows(blocks[:split]), test=rows(blocks[split:]))
