"""n-gram heads (`ngram_layers`): the match mask against its definition, the hash-map step form against the
parallel form, the table's size, and clear errors. Padding, packing, generate and export run in the conformance
suite's `+ngram` cases."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from hf_seqplugins.core.ngram import NGramHead
from hf_seqplugins.testing import tiny_config


def brute_force(head: NGramHead, ids: list[int], hidden: torch.Tensor) -> torch.Tensor:
    """The definition: position i averages h_j over n <= j <= i-1 with x_{i-r} == x_{j-1-r} for r < n."""
    n, mean = head.order, torch.zeros_like(hidden)
    for i in range(n - 1, len(ids)):
        matches = [j for j in range(n, i) if all(ids[i - r] == ids[j - 1 - r] for r in range(n))]
        if matches:
            mean[i] = hidden[matches].mean(0)
    return head.match_proj(mean) + head.skip_proj(hidden)


def gru_with_ngrams(order: int, **overrides):
    torch.manual_seed(0)
    config = tiny_config("seqp_gru", ngram_layers=[1], ngram_orders=order, initializer_range=0.3, **overrides)
    return AutoModelForCausalLM.from_config(config).eval().double()


@pytest.mark.parametrize("order", [1, 2, 3])
def test_match_mask_equals_its_definition(order):
    head = gru_with_ngrams(order).model.layers[1].mixer
    ids = torch.randint(0, 3, (3, 24), generator=torch.Generator().manual_seed(order))
    hidden = torch.randn(3, 24, 16, dtype=torch.float64)
    with torch.no_grad():
        got = head(hidden, input_ids=ids)
        for row in range(3):
            torch.testing.assert_close(got[row], brute_force(head, ids[row].tolist(), hidden[row]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [1, 3])
@torch.no_grad()
def test_hash_map_steps_equal_the_parallel_form(order):
    model = gru_with_ngrams(order)
    ids = torch.randint(0, 4, (2, 20), generator=torch.Generator().manual_seed(0))
    full = model(ids, use_cache=False).logits
    for prefill in (1, 7):
        out = model(ids[:, :prefill], use_cache=True)
        logits = [out.logits]
        for t in range(prefill, ids.shape[1]):
            logits.append(model(ids[:, t : t + 1], cache=out.cache, use_cache=True).logits)
        torch.testing.assert_close(torch.cat(logits, 1), full, rtol=0, atol=1e-12)


@torch.no_grad()
def test_the_table_holds_one_entry_per_distinct_ngram():
    model = gru_with_ngrams(2)
    ids = torch.tensor([[1, 2, 1, 2, 1, 3, 3, 3], [0, 0, 0, 0, 0, 0, 0, 0]])
    cache = model(ids, use_cache=True).cache
    table = cache.layers[1].recurrent_states[0]
    # row 0: preceding bigrams of positions 2..7: (1,2) (2,1) (1,2) (2,1) (1,3) (3,3) -> 4 distinct; row 1: (0,0)
    counts = table[:, 1:, 2]
    assert sorted(counts[0][counts[0] > 0].tolist()) == [1, 1, 2, 2]
    assert counts[1][counts[1] > 0].tolist() == [6]
    assert table.shape[1] == 1 + 4
    assert table[0, 0, :3].tolist() == [3, 3, 8]  # the last two ids, tokens seen


def test_ngram_layers_need_input_ids():
    model = gru_with_ngrams(2)
    with pytest.raises(ValueError, match="n-gram head .* pass input_ids"):
        model(inputs_embeds=torch.randn(1, 3, 16, dtype=torch.float64))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ngram_layers": [2]}, r"ngram_layers must be block indices in \[0, 2\)"),
        ({"ngram_layers": [0, 0]}, "lists a block twice"),
        ({"ngram_layers": [0, 1], "ngram_orders": [2]}, "one such integer per entry"),
        ({"ngram_layers": [0], "ngram_orders": 0}, "ngram_orders must be an integer >= 1"),
    ],
)
def test_invalid_ngram_options_raise_naming_the_field(options, message):
    with pytest.raises(ValueError, match=message):
        tiny_config("seqp_gru", **options)


def test_an_ngram_head_cannot_replace_an_attention_block():
    with pytest.raises(ValueError, match="'full_attention' blocks"):
        tiny_config("seqp_mamba2", attention_layers=[1], ngram_layers=[1])


def test_orders_per_layer_and_a_config_round_trip(tmp_path):
    config = tiny_config("seqp_lstm", num_hidden_layers=3, ngram_layers=[0, 2], ngram_orders=[1, 3])
    model = AutoModelForCausalLM.from_config(config)
    assert [getattr(layer.mixer, "order", None) for layer in model.model.layers] == [1, None, 3]
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert (reloaded.ngram_layers, reloaded.ngram_orders) == ([0, 2], [1, 3])
