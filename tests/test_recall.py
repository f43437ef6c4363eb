"""JRT-Prompt (read twice), the key-value extraction task, and greedy exact-match recall accuracy."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_seqplugins.app import recall, tasks
from hf_seqplugins.app.data import byte_tokenizer
from hf_seqplugins.app.tasks import IGNORE, KV_COLON, KV_NEWLINE, KV_PERIOD, kv_extraction
from hf_seqplugins.testing import tiny_config


def test_read_twice_repeats_the_context_before_the_question():
    doc = "Name: Ada. Born: 1815."
    assert recall.read_twice(doc, " Born:") == doc + "\n" + doc + " Born:"
    swde = recall.read_twice(doc, " Ada:", intro="Information about Ada. ")
    assert swde == "Information about Ada. " + doc + "\n" + doc + " Ada:"
    assert recall.read_twice_ids([5, 6], [7], intro=[1], separator=[2]) == [1, 5, 6, 2, 5, 6, 7]
    with pytest.raises(ValueError, match="context is empty"):
        recall.read_twice("", "Q:")
    with pytest.raises(ValueError, match="context is empty"):
        recall.read_twice_ids([], [7])
    with pytest.raises(TypeError, match="read_twice_ids takes ids"):
        recall.read_twice([5, 6], "Q:")
    with pytest.raises(TypeError, match="integer token ids"):
        recall.read_twice_ids("abc", [7])


def _bos_word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that, like Llama's, puts a BOS (id 1) before every text."""
    words = ["<pad>", "<s>", "<unk>", "|", "Ada", "was", "born", "in", "1815", ".", "Born", ":"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Whitespace()]
    )
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>", unk_token="<unk>")


def test_encode_read_twice_with_our_tokenizer_and_one_that_adds_a_bos():
    context, question = "Ada was born in 1815 .", " Born :"
    tokenizer = byte_tokenizer()
    ids = recall.encode_read_twice(tokenizer, context, question)
    assert tokenizer.decode(ids) == recall.read_twice(context, question)
    words = _bos_word_tokenizer()
    ids = recall.encode_read_twice(words, context, question, separator=" | ")
    document = words(context, add_special_tokens=False)["input_ids"]
    assert ids == [1, *document, 3, *document, 10, 11], "BOS first, then the context twice as the same ids"
    assert recall.encode_read_twice(words, context, question, add_special_tokens=False)[0] != 1
    with pytest.raises(TypeError, match="needs the model's tokenizer"):
        recall.encode_read_twice(None, context, question)


def test_generate_answer_reads_once_or_twice():
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("seqp_gru", vocab_size=len(tokenizer))).eval()
    for twice in (True, False):
        answer = recall.generate_answer(model, tokenizer, "Ada: 1815.", " Ada:", twice=twice, max_new_tokens=3)
        assert isinstance(answer, str)
    with pytest.raises(TypeError, match="needs the model's tokenizer"):
        recall.generate_answer(model, None, "Ada: 1815.", " Ada:")
    with pytest.raises(ValueError, match="context is empty"):
        recall.generate_answer(model, tokenizer, "", " Ada:", twice=False)


def _facts(document: list[int], key_length: int, value_length: int) -> list[tuple[tuple, tuple]]:
    """(key, value) of each `key : value .` fact of a document, checking the layout."""
    size = key_length + value_length + 2
    assert len(document) % size == 0
    facts = []
    for start in range(0, len(document), size):
        fact = document[start : start + size]
        assert fact[key_length] == KV_COLON and fact[-1] == KV_PERIOD
        facts.append((tuple(fact[:key_length]), tuple(fact[key_length + 1 : -1])))
    return facts


def test_kv_extraction_answer_is_the_value_of_the_asked_key_in_the_document():
    data = kv_extraction(num_examples=20, num_facts=6, num_distractors=3, key_length=2, value_length=3, seed=4)
    for tokens, labels in zip(data["input_ids"], data["labels"]):
        answer = [i for i, label in enumerate(labels) if label != IGNORE]
        assert answer == list(range(len(tokens) - 3, len(tokens))), "the labels are the last value_length tokens"
        *document, key_a, key_b, colon = tokens[: answer[0]]
        assert colon == KV_COLON
        facts = dict(_facts(document, 2, 3))
        assert len(facts) == 6, "distinct keys"
        assert facts[(key_a, key_b)] == tuple(tokens[answer[0] :])
        near_misses = [key for key in facts if key[0] == key_a and key != (key_a, key_b)]
        assert len(near_misses) >= 3, "the distractors share all but the last key symbol"
    assert len({len(row) for row in data["input_ids"]}) == 1
    with pytest.raises(ValueError, match="num_distractors < num_facts"):
        kv_extraction(num_facts=2, num_distractors=2)
    with pytest.raises(ValueError, match="key_length >= 2"):
        kv_extraction(key_length=1)


def test_kv_extraction_read_twice_holds_the_same_facts_twice():
    settings = {"num_examples": 8, "num_facts": 5, "seed": 3}
    plain, twice = kv_extraction(**settings), kv_extraction(read_twice=True, **settings)
    asked_first = kv_extraction(read_twice=True, ask_first=True, **settings)
    for once, again, intro in zip(plain, twice, asked_first):
        document, question = once["input_ids"][:-5], once["input_ids"][-5:]
        assert again["input_ids"] == [*document, KV_NEWLINE, *document, *question]
        assert again["labels"][-2:] == once["labels"][-2:] and set(again["labels"][:-2]) == {IGNORE}
        assert intro["input_ids"] == [tasks.KV_ABOUT, *question[:2], KV_PERIOD, *again["input_ids"]]
    split = tasks.splits("kv_extraction", num_train=4, num_test=2, num_facts=3, read_twice=True)
    assert len(split["train"]) == 4 and KV_NEWLINE in split["test"][0]["input_ids"]


class _Lookup(torch.nn.Module):
    """A fake causal LM: the next token of every prefix of `rows` it was shown (an oracle), or always `constant`."""

    def __init__(self, rows: list[list[int]], vocab_size: int, constant: int | None = None):
        super().__init__()
        self.next = {tuple(row[: t + 1]): row[t + 1] for row in rows for t in range(len(row) - 1)}
        self.vocab_size, self.constant = vocab_size, constant
        self.config = SimpleNamespace(pad_token_id=0)
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for b, (row, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
            start = mask.index(1)
            for t in range(start, len(row)):
                guess = self.constant if self.constant is not None else self.next.get(tuple(row[start : t + 1]), 0)
                logits[b, t, guess] = 1.0
        return SimpleNamespace(logits=logits)


def test_recall_accuracy_is_one_for_an_oracle_and_zero_for_a_constant_model():
    rows = kv_extraction(num_examples=6, num_facts=4, seed=2)
    mixed_lengths = kv_extraction(num_examples=5, num_facts=7, seed=5)
    both = tasks.Dataset.from_dict(
        {
            "input_ids": list(rows["input_ids"]) + list(mixed_lengths["input_ids"]),
            "labels": list(rows["labels"]) + list(mixed_lengths["labels"]),
        }
    )
    size = tasks.vocab_size(rows)
    oracle = _Lookup(both["input_ids"], size)
    assert recall.recall_accuracy(oracle, both, batch_size=4) == 1.0, "left padding keeps every answer in place"
    assert recall.recall_accuracy(_Lookup([], size, constant=KV_COLON), both, batch_size=4) == 0.0
    half = _Lookup(rows["input_ids"], size)  # knows only the first rows
    assert recall.recall_accuracy(half, both, batch_size=3) == pytest.approx(6 / 11)
    queries = tasks.mqar(num_examples=3, num_pairs=4, num_queries=3)
    assert recall.recall_accuracy(_Lookup(queries["input_ids"], 64), queries) == 1.0, "three answers a row"
    with pytest.raises(ValueError, match="classification rows"):
        recall.recall_accuracy(oracle, tasks.listops(num_examples=2, length=16))
    for labels, message in (([IGNORE, IGNORE], "no labelled answer"), ([1, IGNORE], "no prompt to answer from")):
        with pytest.raises(ValueError, match=message):
            recall.recall_accuracy(oracle, tasks.Dataset.from_dict({"input_ids": [[1, 2]], "labels": [labels]}))


def _tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("kind", ["seqp_mamba2", "seqp_gru", "llama"])
def test_recall_accuracy_runs_on_our_models_and_transformers_llama(kind):
    rows = kv_extraction(num_examples=6, num_facts=3, seed=1)
    longer = kv_extraction(num_examples=3, num_facts=5, seed=1)
    mixed = tasks.Dataset.from_dict(
        {
            "input_ids": list(rows["input_ids"]) + list(longer["input_ids"]),
            "labels": list(rows["labels"]) + list(longer["labels"]),
        }
    )
    size = tasks.vocab_size(rows)
    if kind == "llama":
        model = _tiny_llama(size)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(kind, vocab_size=size))
    one_at_a_time = recall.recall_accuracy(model, mixed, batch_size=1, progress=False)
    padded = recall.recall_accuracy(model, mixed, batch_size=9, progress=False)
    assert 0.0 <= padded <= 1.0 and padded == one_at_a_time, "left padding does not change the answers"
    assert torch.is_grad_enabled() and model.training, "gradients stay on and the model's mode is restored"
    scores = recall.compare_read_twice(model, num_examples=4, num_facts=3, progress=False)
    assert set(scores) == {"plain", "read_twice"}
    with pytest.raises(ValueError, match="no read_twice option"):
        recall.compare_read_twice(model, task="mqar")


def test_teacher_forced_exact_match_agrees_with_greedy_generation():
    rows = kv_extraction(num_examples=8, num_facts=2, num_distractors=0, value_length=2, seed=6)
    model = _tiny_llama(tasks.vocab_size(rows))
    with torch.no_grad():
        for row in rows:
            prompt = torch.tensor([row["input_ids"][:-2]])
            # an explicit mask: the prompt holds KV_COLON = 0, which generate would otherwise take for padding
            generated = model.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=2, do_sample=False, pad_token_id=0
            )[0, -2:].tolist()
            single = tasks.Dataset.from_dict({"input_ids": [row["input_ids"]], "labels": [row["labels"]]})
            assert recall.recall_accuracy(model, single, progress=False) == float(generated == row["input_ids"][-2:])
            forced = tasks.Dataset.from_dict(
                {"input_ids": [prompt[0].tolist() + generated], "labels": [[IGNORE] * prompt.shape[1] + generated]}
            )
            assert recall.recall_accuracy(model, forced, progress=False) == 1.0, "greedy output is an exact match"


def _benchmark_module():
    """benchmarks/recall.py, imported from its file (benchmarks/ is not a package)."""
    path = Path(__file__).parent.parent / "benchmarks" / "recall.py"
    spec = importlib.util.spec_from_file_location("recall_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_model_specs_sizes_and_padding():
    benchmark = _benchmark_module()
    assert benchmark.parse_model_spec("seqp_gru") == ("seqp_gru", {})
    assert benchmark.parse_model_spec("seqp_gru:ngram_layers=[1, 2]:cell=gru") == (
        "seqp_gru",
        {"ngram_layers": [1, 2], "cell": "gru"},
    )
    assert benchmark.parse_model_spec('seqp_gru:{"ngram_layers": [1]}') == ("seqp_gru", {"ngram_layers": [1]})
    with pytest.raises(ValueError, match="has no config field 'hiden_size'"):
        benchmark.sized_settings("seqp_gru", {"hiden_size": 8}, 10_000, 2, 64)
    for model_type in ("seqp_gru", benchmark.bench.BASELINE):
        settings = benchmark.sized_settings(model_type, {}, 50_000, 2, 64)
        model = benchmark.build(benchmark.model_config(model_type, {**settings, "vocab_size": 64}))
        total, inner = benchmark.parameter_counts(model)
        assert 25_000 < inner < 100_000 and total - inner >= 64 * settings["hidden_size"]
    batch = benchmark.pad_right(
        [{"input_ids": [3, 4, 5], "labels": [-100, -100, 5]}, {"input_ids": [6], "labels": [6]}]
    )
    assert batch["input_ids"].tolist() == [[3, 4, 5], [6, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 5], [6, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
