"""Embedded default data: real English text that ships with every CPython, and a byte-level tokenizer.

Nothing is downloaded. The tokenizer is byte-level (UTF-8 bytes shifted by 3 after pad=0, eos=1, unk=2;
vocabulary 259, ByT5's ids) and, like GPT-2's or Llama's, adds no end-of-sequence token to a text: a prompt
ends where it ends, so `pipeline("text-generation")` continues it as `generate()` does on its raw ids. It is a
`PreTrainedTokenizerFast` built in code (no vocabulary download), saves as `tokenizer.json` next to the model
and loads with `AutoTokenizer` in plain transformers, so `pipeline("text-generation", model=folder,
trust_remote_code=True)` works on an exported folder.
"""

from __future__ import annotations

import pydoc_data.topics

from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"<pad>": 0, "</s>": 1, "<unk>": 2}
BYTE_OFFSET = len(SPECIAL_TOKENS)


def _byte_characters() -> list[str]:
    """One printable character per byte value, the byte-level convention of GPT-2's tokenizer (which
    `tokenizers`' ByteLevel pre-tokenizer and decoder use): printable Latin-1 bytes stand for themselves, the
    others for the characters from U+0100 on, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    characters, shifted = [], 0
    for value in range(256):
        if value in printable:
            characters.append(chr(value))
        else:
            characters.append(chr(256 + shifted))
            shifted += 1
    return characters


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level tokenizer: byte b is token b + 3 after pad 0, eos 1, unk 2 (vocabulary 259); no special
    token is added to a text."""
    vocabulary = {**SPECIAL_TOKENS, **{c: value + BYTE_OFFSET for value, c in enumerate(_byte_characters())}}
    tokenizer = Tokenizer(models.BPE(vocabulary, [], unk_token="<unk>"))  # no merges: one token per byte
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def is_byte_tokenizer(tokenizer: PreTrainedTokenizerBase | None) -> bool:
    """Whether `tokenizer` (e.g. reloaded from a folder) is `byte_tokenizer()`'s, whose tokens are bytes."""
    return (
        tokenizer is not None
        and len(tokenizer) == BYTE_OFFSET + 256
        and tokenizer("Aé", add_special_tokens=False)["input_ids"] == [b + BYTE_OFFSET for b in "Aé".encode()]
    )


def pydoc_corpus() -> str:
    """Python's documentation topics (`pydoc_data.topics`, about 460 KB of English), in a fixed order."""
    return "\n\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))


def text_blocks(tokenizer: PreTrainedTokenizerBase, text: str, block_size: int = 128) -> list[list[int]]:
    """`text` tokenized once and cut into consecutive `block_size` blocks (the incomplete tail left out)."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]


def language_modeling_rows(blocks: list[list[int]]) -> Dataset:
    """Blocks as a causal-LM dataset (`input_ids` and `labels`)."""
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def language_modeling_dataset(
    tokenizer: PreTrainedTokenizerBase, text: str | None = None, block_size: int = 128, test_fraction: float = 0.05
) -> DatasetDict:
    """`text` (default: `pydoc_corpus()`) cut into `block_size` blocks (`text_blocks`) with `labels`; the last
    `test_fraction` of the blocks (held-out text, not a random sample) is the test split."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    blocks = text_blocks(tokenizer, text if text is not None else pydoc_corpus(), block_size)
    split = len(blocks) - max(1, int(test_fraction * len(blocks)))
    if split < 1:
        raise ValueError(f"the text gives {len(blocks)} blocks of {block_size} tokens: too few to split")
    return DatasetDict(train=language_modeling_rows(blocks[:split]), test=language_modeling_rows(blocks[split:]))
