"""CoLa: chains of a pretrained model's layers (skip, repeat), the chain-keyed cache, and the MCTS chain search."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, LlamaForCausalLM

import hf_seqplugins
from hf_seqplugins.core.cola import (
    ChainEdit,
    ChainSearchResult,
    CoLaSearch,
    CorrectnessReward,
    chain_edits,
    current_chain,
    identity_chain,
    next_token_correct,
    remove_chain,
    repeat_block,
    search_chain,
    skip_block,
    summarize_searches,
    use_chain,
    with_chain,
)
from hf_seqplugins.export import export
from hf_seqplugins.testing import run_without_package, tiny_config

# model name -> (a chain with a repeated and a skipped layer, a chain looping a block)
MODELS = {
    "llama": ((0, 0, 2), (0, 1, 2, 1, 2)),
    "seqp_gru": ((1, 1), (0, 1, 0, 1)),
    "seqp_mamba2": ((0, 1, 1), (0, 1, 2, 1, 2)),  # layer 1 is full attention: a KV cache per occurrence
    "seqp_miras_hybrid": ((1, 1), (0, 1, 0, 1)),  # layer 1 is sliding-window attention
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "llama":
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = LlamaForCausalLM(config)
    elif name == "seqp_miras_hybrid":
        model = AutoModelForCausalLM.from_config(tiny_config("seqp_miras", swa_layers=[1], swa_window=3))
    else:
        model = AutoModelForCausalLM.from_config(tiny_config(name))
    # float64: greedy tokens of the cached and uncached paths then never differ by rounding at a near tie
    return model.double().eval()


@pytest.fixture(scope="module", params=list(MODELS))
def named_model(request):
    return request.param, build(request.param)


@pytest.fixture(scope="module")
def llama():
    return build("llama")


def prompt(model: nn.Module, batch: int = 2, length: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=generator)


def logits(model: nn.Module, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def greedy_by_full_forwards(model: nn.Module, ids: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        ids = torch.cat([ids, logits(model, ids, use_cache=False)[:, -1:].argmax(-1)], dim=1)
    return ids


def generate(model: nn.Module, ids: torch.Tensor, steps: int, use_cache: bool) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )


def test_identity_chain_reproduces_the_stock_model_and_removal_restores_it(named_model):
    _, model = named_model
    ids = prompt(model)
    stock = logits(model, ids)
    layers, config, keys = model.model.layers, model.config, list(model.state_dict())
    assert identity_chain(model) == tuple(range(len(layers)))
    with use_chain(model, identity_chain(model)):
        assert model.config is not config and model.config.num_hidden_layers == len(layers)
        assert torch.equal(logits(model, ids), stock)
    assert model.model.layers is layers and model.config is config and model.model.config is config
    assert list(model.state_dict()) == keys and current_chain(model) == identity_chain(model)
    assert torch.equal(logits(model, ids), stock)


def test_a_repeated_layer_changes_the_logits(named_model):
    name, model = named_model
    ids = prompt(model)
    stock = logits(model, ids)
    with use_chain(model, MODELS[name][0]):
        assert not torch.allclose(logits(model, ids), stock)


def test_cached_generation_equals_full_forwards_with_a_repeated_and_a_skipped_layer(named_model):
    name, model = named_model
    chain = MODELS[name][0]
    assert len(set(chain)) < len(chain) and len(set(chain)) < len(identity_chain(model))
    ids = prompt(model)
    with use_chain(model, chain):
        expected = greedy_by_full_forwards(model, ids, steps=5)
        assert torch.equal(generate(model, ids, steps=5, use_cache=True), expected)


def test_a_looped_block_generates_the_same_with_and_without_the_cache(named_model):
    name, model = named_model
    ids = prompt(model)
    with use_chain(model, MODELS[name][1]):
        assert torch.equal(generate(model, ids, 5, use_cache=True), generate(model, ids, 5, use_cache=False))


def test_the_cache_has_a_slot_per_chain_position(named_model):
    name, model = named_model
    chain = MODELS[name][1]
    ids = prompt(model)
    with use_chain(model, chain):
        assert model.config.num_hidden_layers == len(chain)
        stock_types = getattr(build(name).config, "layer_types", None)
        if stock_types is not None:
            assert model.config.layer_types == [stock_types[i] for i in chain]
        with torch.no_grad():
            cache = model(input_ids=ids, use_cache=True).cache
    assert len(cache.layers) == len(chain)
    first, second = [p for p, index in enumerate(chain) if index == 1][:2]

    def contents(layer):
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            return layer.keys
        return layer.recurrent_states[0]

    # the two occurrences of layer 1 saw different inputs, so they keep different states
    assert contents(cache.layers[first]).shape == contents(cache.layers[second]).shape
    assert not torch.equal(contents(cache.layers[first]), contents(cache.layers[second]))


def test_a_cache_built_from_the_config_inside_the_chain_follows_it(llama):
    ids = prompt(llama)
    with use_chain(llama, (0, 1, 1, 2)):
        expected = logits(llama, ids)
        cache = DynamicCache(config=llama.config)
        with torch.no_grad():
            head = llama(input_ids=ids[:, :-1], cache=cache, use_cache=True)
            last = llama(input_ids=ids[:, -1:], cache=head.cache, use_cache=True).logits
    assert len(cache.layers) == 4
    torch.testing.assert_close(last[:, -1], expected[:, -1])


def test_each_layer_stays_in_the_module_tree_once():
    model = build("llama")
    parameters = [id(p) for p in model.parameters()]
    ids = prompt(model)
    with use_chain(model, (0, 2, 2, 2)):  # layer 1 skipped, layer 2 three times
        assert sorted(id(p) for p in model.parameters()) == sorted(parameters)
        assert all(key.startswith("model.cola_layers.") for key in model.state_dict() if ".layers." in key)
        # transformers installs its output-capturing hooks at the first such call: here, inside the chain
        with torch.no_grad():
            assert len(model(input_ids=ids, output_hidden_states=True).hidden_states) == 5
    assert not hasattr(model.model, "cola_layers") and [id(p) for p in model.parameters()] == parameters
    with torch.no_grad():
        assert len(model(input_ids=ids, output_hidden_states=True).hidden_states) == 4


def test_use_chain_nests_and_restores_on_errors(llama):
    stock = identity_chain(llama)
    with use_chain(llama, (0, 2)):
        assert current_chain(llama) == (0, 2) and len(llama.model.layers) == 2
        with pytest.raises(RuntimeError, match="inside"):
            with use_chain(llama, (1, 1, 1)):
                assert current_chain(llama) == (1, 1, 1)
                raise RuntimeError("inside")
        assert current_chain(llama) == (0, 2) and llama.config.num_hidden_layers == 2
    assert current_chain(llama) == stock and llama.config.num_hidden_layers == 3
    assert with_chain(llama, (2, 1, 0)) is llama and with_chain(llama, (0, 0)) is llama
    assert current_chain(llama) == (0, 0) and identity_chain(llama) == stock
    assert remove_chain(llama) is llama and current_chain(llama) == stock
    assert remove_chain(llama) is llama


def test_bad_chains_and_models_raise_value_errors(llama):
    with pytest.raises(ValueError, match=r"position 1 holds layer index 3, out of range: the model has 3 layers"):
        with_chain(llama, (0, 3))
    with pytest.raises(ValueError, match="layer index -1"):
        with_chain(llama, (-1,))
    with pytest.raises(ValueError, match="chain is empty"):
        with_chain(llama, ())
    with use_chain(llama, (0, 0)):
        with pytest.raises(ValueError, match="layer index 7"):
            with_chain(llama, (7,))
        assert current_chain(llama) == (0, 0) and llama.config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="not an integer"):
        with_chain(llama, (0, True))
    with pytest.raises(ValueError, match=r"no decoder layers on Linear: tried .*model\.layers.*transformer\.h"):
        with_chain(nn.Linear(2, 2), (0,))
    assert current_chain(llama) == identity_chain(llama)


def test_chain_edits():
    assert skip_block((0, 1, 2, 3), 1, 2) == (0, 3)
    assert repeat_block((0, 1, 2), 1, 2) == (0, 1, 2, 1, 2)
    assert repeat_block((0, 1, 2), 0, 1, times=2) == (0, 0, 0, 1, 2)
    assert ChainEdit("skip", 0, 1).apply((0, 1)) == (1,)
    with pytest.raises(ValueError, match="leave it empty"):
        skip_block((0, 1), 0, 2)
    with pytest.raises(ValueError, match="does not fit"):
        repeat_block((0, 1), 1, 2)
    with pytest.raises(ValueError, match="block length"):
        skip_block((0, 1), 0, 0)
    with pytest.raises(ValueError, match="kind"):
        ChainEdit("swap", 0, 1).apply((0, 1))
    edits = chain_edits((0, 1, 2), block_lengths=(1, 3), repeat_counts=(1,), max_length=5)
    assert ChainEdit("skip", 0, 3) not in edits and ChainEdit("repeat", 0, 3) not in edits  # empty / too long
    assert len(edits) == 6 and ChainEdit("repeat", 2, 1) in edits


def edit_distance(a, b) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


class TowardsChain:
    """A toy reward: minus the edit distance to `target`, checking that the search put the chain in place."""

    def __init__(self, target):
        self.target, self.calls = tuple(target), []

    def __call__(self, model, sample, chain):
        assert current_chain(model) == chain
        self.calls.append(chain)
        return -float(edit_distance(chain, self.target))


@pytest.mark.parametrize("target", [(0, 1, 1, 2), (0, 0, 2), (1, 2, 1, 2), (2,)])
def test_search_finds_the_rewarded_chain_within_the_budget(llama, target):
    reward = TowardsChain(target)
    result = CoLaSearch(reward, budget=30, seed=0).search(llama, sample=None)
    assert result.chain == target and result.reward == 0.0
    assert result.identity == (0, 1, 2) and result.identity_reward == -edit_distance((0, 1, 2), target)
    assert len(reward.calls) == result.simulations == len(result.visited) == 30
    assert len(set(reward.calls)) == len(reward.calls) and reward.calls[0] == (0, 1, 2)
    assert current_chain(llama) == (0, 1, 2)


def test_search_is_deterministic_by_seed_and_respects_the_budget(llama):
    runs = [CoLaSearch(TowardsChain((0, 1, 1, 2, 2)), budget=12, seed=seed).search(llama, None) for seed in (3, 3, 4)]
    assert list(runs[0].visited.items()) == list(runs[1].visited.items())
    assert list(runs[0].visited) != list(runs[2].visited)
    for budget in (1, 2, 7):
        reward = TowardsChain((0,))
        result = search_chain(llama, None, reward, budget=budget, exploration=0.5)
        assert len(reward.calls) == result.simulations == budget
    # a tree with fewer chains than the budget: every chain once, then the search stops
    reward = TowardsChain((0,))
    result = CoLaSearch(reward, budget=500, block_lengths=(1,), max_edits=1).search(llama, None)
    assert len(reward.calls) == result.simulations == 1 + len(chain_edits((0, 1, 2), (1,), (1,), 6)) == 7


def test_search_with_the_correctness_reward_fixes_a_label_made_by_another_chain(llama):
    ids = prompt(llama, batch=16, length=5)
    with use_chain(llama, (0, 0, 2)):
        labels = logits(llama, ids)[:, -1].argmax(-1)
    stock = logits(llama, ids)[:, -1].argmax(-1)
    samples = [{"input_ids": row, "label": int(label)} for row, label in zip(ids, labels)]
    wrong = [sample for sample, guess in zip(samples, stock) if int(guess) != sample["label"]]
    assert wrong, "the identity chain must miss some labels for the test to mean anything"
    search = CoLaSearch(CorrectnessReward(next_token_correct, length_penalty=0.1), budget=25)
    results = search.search_all(llama, wrong[:3] + samples[:3], disable=True)
    for result in results[:3]:
        assert result.correct[result.identity] is False and result.correct[result.chain] is True
        assert result.reward == pytest.approx(1 - 0.1 * len(result.chain) / 3)
    summary = summarize_searches(results)
    assert summary.identity_wrong >= 3 and summary.fixed >= 3
    assert summary.identity_correct + summary.identity_wrong == 6


def test_summary_shares():
    def result(correct: dict) -> ChainSearchResult:
        visited = {chain: float(ok) for chain, ok in correct.items()}
        return ChainSearchResult((0, 1, 2), 0.0, (0, 1, 2), 0.0, visited, correct, len(correct))

    results = [
        result({(0, 1, 2): True, (0, 2): True}),  # right, and a shorter chain is right too
        result({(0, 1, 2): True, (0, 1, 1, 2): True, (0, 2): False}),  # right, only longer chains also right
        result({(0, 1, 2): False, (1, 1, 2): True}),  # wrong, fixed
        result({(0, 1, 2): False, (1, 2): False}),  # wrong, not fixed
        result({(0, 1, 2): False, (2,): True}),  # wrong, fixed
    ]
    summary = summarize_searches(results)
    assert (summary.identity_correct, summary.identity_wrong, summary.shorter, summary.fixed) == (2, 3, 1, 2)
    assert summary.shorter_share == 0.5 and summary.fixed_share == pytest.approx(2 / 3)
    bare = [ChainSearchResult((0, 1), 1.0, (0, 1), 0.5, {(0, 1): 0.5, (0,): 1.0}, None, 2)]
    assert summarize_searches(bare, correct=lambda chain, reward: reward > 0.9).fixed == 1
    assert summarize_searches([]).shorter_share is None
    with pytest.raises(ValueError, match="records no correctness"):
        summarize_searches(bare)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"budget": 0}, "budget"),
        ({"budget": 2.5}, "budget"),
        ({"exploration": -0.1}, "exploration"),
        ({"exploration": float("nan")}, "exploration"),
        ({"block_lengths": (1, 0)}, "block_lengths"),
        ({"block_lengths": ()}, "block_lengths"),
        ({"repeat_counts": (0,)}, "repeat_counts"),
        ({"max_length": 0}, "max_length"),
        ({"max_edits": 0}, "max_edits"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_invalid_search_settings_name_the_field(options, field):
    with pytest.raises(ValueError, match=rf"CoLaSearch\.{field} must be"):
        CoLaSearch(TowardsChain((0,)), **options)


def test_invalid_rewards(llama):
    with pytest.raises(ValueError, match="CoLaSearch.reward must be callable"):
        CoLaSearch(None)
    with pytest.raises(ValueError, match="CorrectnessReward.length_penalty"):
        CorrectnessReward(next_token_correct, length_penalty=-1)
    with pytest.raises(ValueError, match=r"reward of chain \[0, 1, 2\] must be a finite number, got nan"):
        CoLaSearch(lambda model, sample, chain: float("nan")).search(llama, None)
    assert current_chain(llama) == identity_chain(llama)


def test_public_names():
    for name in ("with_chain", "use_chain", "remove_chain", "CoLaSearch", "CorrectnessReward", "summarize_searches"):
        assert hasattr(hf_seqplugins, name), name


CHAINED_LOADER = """
import importlib.util, sys, torch
assert importlib.util.find_spec("hf_seqplugins") is None
from transformers import AutoModelForCausalLM
folder = sys.argv[1]
ids = torch.load(folder + "/ids.pt")
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
assert len(model.model.layers) == 3, "the recorded chain is not in place"
with torch.no_grad():
    torch.save({"logits": model(ids).logits,
                "generated": model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)},
               folder + "/clean.pt")
"""


def test_a_chained_model_saves_its_chain_and_loads_with_it_also_as_remote_code(tmp_path):
    """Our models save the stock layers with the chain in the config (a chained Llama: `save_chained`), and
    `from_pretrained` puts the chain back, natively and from the exported remote code without this package."""
    model = with_chain(build("seqp_gru").float(), (1, 0, 1))
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        chained_logits = model(ids).logits
        chained_tokens = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    folder = export(model, tmp_path / "export")
    assert current_chain(model) == (1, 0, 1), "saving must leave the chain in place"
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert current_chain(loaded) == (1, 0, 1)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, chained_logits)
    assert torch.equal(remove_chain(loaded)(ids).logits, remove_chain(model)(ids).logits)  # the stock weights

    torch.save(ids, folder / "ids.pt")
    run_without_package(CHAINED_LOADER, str(folder), work_dir=tmp_path / "cwd")
    clean = torch.load(folder / "clean.pt")
    assert torch.equal(clean["logits"], chained_logits)
    assert torch.equal(clean["generated"], chained_tokens)


def test_save_chained_records_the_chain_of_any_transformers_model(tmp_path):
    from hf_seqplugins.core.cola import apply_recorded_chain, save_chained

    model = with_chain(build("llama"), (0, 2, 2))
    save_chained(model, tmp_path)
    assert current_chain(model) == (0, 2, 2)
    loaded = apply_recorded_chain(LlamaForCausalLM.from_pretrained(tmp_path).double().eval())
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # loaded tensors may sit at other alignments: BLAS rounds differently in the last bit
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(remove_chain(loaded)(ids).logits, model(ids).logits)
