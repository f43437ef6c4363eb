"""Miras (`seqp_miras`: Yaad, Moneta, Memora), what the conformance suite does not check: config errors; a packed
row restarts every sequence from the learned initial memory (and the convolution from zeros), as each sequence alone;
padding anywhere in a row is skipped; the sliding-window attention against explicit windowed attention, decoded
token by token past its window; every variant trains; Memora's read weights are positive rows summing to c; the
cache has the size the model card states, whatever the number of decoded tokens. The generic model checks run in
`tests/test_conformance.py`.
"""

import math
import re

import pytest
import torch
from transformers import DynamicCache

from hf_seqplugins import read_state
from hf_seqplugins.export import render_model_card
from hf_seqplugins.plugins.miras import MirasConfig, MirasForCausalLM, MirasMixer, SlidingWindowAttention

TOL = {"atol": 1e-11, "rtol": 1e-9}
SMALL = {
    "vocab_size": 32,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "intermediate_size": 32,
    "num_heads": 2,
    "memory_expansion": 2,
    "memory_chunk": 3,
    "conv_kernel_size": 3,
    "gate_rank": 4,
}
VARIANTS = ("yaad", "moneta", "memora")


def config(**overrides) -> MirasConfig:
    return MirasConfig(**{**SMALL, **overrides})


def model(seed: int = 0, **overrides) -> MirasForCausalLM:
    torch.manual_seed(seed)
    return MirasForCausalLM(config(**overrides)).double().eval()


def hidden(batch=1, steps=11, seed=0) -> torch.Tensor:
    return torch.randn(batch, steps, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"memory_variant": "titans"}, r"memory_variant must be one of \['yaad', 'moneta', 'memora'\], got 'titans'"),
        ({"retrieval": "exact"}, r"retrieval must be one of \['dual_form', 'chunk_start'\]"),
        ({"swa_layers": [2]}, r"swa_layers must be a list of block indices in \[0, 2\), got \[2\]"),
        ({"swa_layers": [1, 1]}, "swa_layers lists a block twice"),
        ({"swa_layers": 1}, "swa_layers must be a list of block indices"),
        ({"swa_layers": [True]}, "swa_layers must be a list of block indices"),
        ({"swa_layers": [0], "head_dim": 5}, "head_dim must be even for the sliding-window attention"),
        ({"num_heads": 3}, r"hidden_size \(16\) must be divisible by num_heads \(3\)"),
        ({"head_dim": 0}, "head_dim must be an integer >= 1"),
        ({"memory_chunk": 0}, "memory_chunk must be an integer >= 1"),
        ({"memory_expansion": 1.5}, "memory_expansion must be an integer >= 1"),
        ({"gate_rank": 0}, "gate_rank must be an integer >= 1"),
        ({"conv_kernel_size": 0}, "conv_kernel_size must be an integer >= 1"),
        ({"swa_window": 0}, "swa_window must be an integer >= 1"),
        ({"bias_power": 0.5}, "bias_power must be a finite number >= 1"),
        ({"retention_power": 1.0}, "retention_power must be a finite number >= 2"),
        ({"eta_max": 0.0}, "eta_max must be a finite number > 0"),
        ({"memora_scale": float("inf")}, "memora_scale must be a finite number > 0"),
        ({"smooth_eps": -1e-6}, "smooth_eps must be a finite number > 0"),
        ({"rope_theta": "10000"}, "rope_theta must be a finite number > 0"),
    ],
)
def test_bad_config_values_raise_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_head_dim_defaults_to_hidden_size_over_heads_and_sets_the_memory_size():
    cfg = config(head_dim=None, memory_expansion=3)
    assert (cfg.head_width, cfg.memory_hidden) == (8, 24)
    mixer = model(**{"memory_expansion": 3}).model.layers[0].mixer
    assert tuple(mixer.memory_w1.shape) == (2, 8, 24) and tuple(mixer.memory_w2.shape) == (2, 24, 8)


@pytest.mark.parametrize("variant", ["yaad", "memora"])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_packed_sequences_restart_from_the_learned_initial_memory(variant, backend):
    """A row of three packed sequences gives each the outputs and (for the last) the final state it gets alone. The
    learned initial memory is far from zero (Memora: from uniform rows), so a reset to zeros would differ."""
    mixer = model(memory_variant=variant, kernel_backend=backend).model.layers[0].mixer
    lengths = (4, 5, 2)
    x = hidden(steps=sum(lengths))
    resets = torch.zeros(1, sum(lengths), dtype=torch.bool)
    resets[0, 4] = resets[0, 9] = True
    cfg = mixer.config
    packed_cache, alone_cache = DynamicCache(config=cfg), DynamicCache(config=cfg)
    packed = mixer(x, cache=packed_cache, resets=resets)
    alone = []
    for start, stop in ((0, 4), (4, 9), (9, 11)):
        alone_cache = DynamicCache(config=cfg)
        alone.append(mixer(x[:, start:stop], cache=alone_cache))
    torch.testing.assert_close(packed, torch.cat(alone, dim=1), **TOL)
    for got, expected in zip(
        packed_cache.layers[0].recurrent_states.values(), alone_cache.layers[0].recurrent_states.values()
    ):
        torch.testing.assert_close(got, expected, **TOL)
    with torch.no_grad():
        mixer.memory_w1.zero_()
        mixer.memory_w2.zero_()
    assert not torch.allclose(mixer(x[:, 4:9]), alone[1], atol=1e-3), "the learned initial memory is not read"


@pytest.mark.parametrize("kind", ["memory", "swa"])
def test_padding_anywhere_in_a_row_is_skipped(kind):
    """Holes in the middle of a row (NaN there) leave the real positions' outputs as without them: the convolution
    and the window count real tokens only."""
    net = model(swa_layers=[1], swa_window=3)
    mixer = net.model.layers[0 if kind == "memory" else 1].mixer
    assert isinstance(mixer, MirasMixer if kind == "memory" else SlidingWindowAttention)
    x = hidden(steps=8)
    holes = torch.tensor([[True, True, False, True, False, False, True, True, True, True, True]])
    spread = torch.full((1, 11, 16), float("nan"), dtype=torch.float64)
    spread[0, holes[0]] = x[0]
    torch.testing.assert_close(mixer(spread, attention_mask=holes)[0, holes[0]], mixer(x)[0], **TOL)


def test_sliding_window_attention_equals_explicit_windowed_attention():
    """Softmax attention over each query's last W = 3 tokens with rotary positions, in a forward and decoded token by
    token (the window then slides over the cache's fixed buffer)."""
    cfg = config(swa_layers=[1], swa_window=3)
    mixer = model(swa_layers=[1], swa_window=3).model.layers[1].mixer
    x = hidden(batch=2, steps=9)
    batch, steps, _ = x.shape
    q, k, v = (p(x).view(batch, steps, 2, 8).transpose(1, 2) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    position = torch.arange(steps, dtype=torch.float64)
    frequency = 10000.0 ** (-torch.arange(0, 4, dtype=torch.float64) / 4)
    angles = torch.cat([position[:, None] * frequency] * 2, dim=-1)

    def rotate(t):
        first, second = t.chunk(2, dim=-1)
        return t * angles.cos() + torch.cat([-second, first], dim=-1) * angles.sin()

    scores = rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(8)
    distance = position[:, None] - position[None, :]
    scores = scores.masked_fill(~((distance >= 0) & (distance < 3)), float("-inf"))
    expected = mixer.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, steps, -1))
    torch.testing.assert_close(mixer(x), expected, **TOL)
    cache = DynamicCache(config=cfg)
    decoded = [mixer(x[:, :2], cache=cache)] + [mixer(x[:, t : t + 1], cache=cache) for t in range(2, steps)]
    torch.testing.assert_close(torch.cat(decoded, dim=1), expected, **TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_on_a_repeated_pattern(variant):
    torch.manual_seed(0)
    net = MirasForCausalLM(config(memory_variant=variant, vocab_size=8)).train()
    rows = torch.tensor([[(start + t) % 5 for t in range(12)] for start in range(5)])
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = net(rows, labels=rows).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    memory = net.model.layers[0].mixer
    assert memory.memory_w1.grad.abs().sum() > 0 and memory.eta_gate.up.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_memora_reads_positive_rows_that_sum_to_its_scale(scale, monkeypatch):
    """After a prefill, Memora's weights (the learned log-weights plus the cached offsets) mapped by c softmax over each
    row's input axis are positive and sum to c, and they are what the last token read (memory_chunk 1, dual form:
    ``y_T = q_T + LN(W1 gelu(W2 q_T))``)."""
    from hf_seqplugins.plugins.miras import modeling

    calls, operator = [], modeling.test_time_memory

    def recording(q, *args, **kwargs):
        outputs, state = operator(q, *args, **kwargs)
        calls.append((q, outputs))
        return outputs, state

    monkeypatch.setattr(modeling, "test_time_memory", recording)
    net = model(memory_variant="memora", memora_scale=scale, memory_chunk=1)
    mixer = net.model.layers[0].mixer
    cache = DynamicCache(config=net.config)
    net(torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(0)), cache=cache, use_cache=True)
    _, x1, x2, _, _, count = read_state(cache, 0, mixer.state_shapes())
    assert bool((x1 != 0).any()) and bool((count == 0).all())
    weights = [scale * torch.softmax(w + x, dim=-1) for w, x in ((mixer.memory_w1, x1), (mixer.memory_w2, x2))]
    for w in weights:
        assert bool((w > 0).all())
        torch.testing.assert_close(w.sum(-1), torch.full_like(w[..., 0], scale), **TOL)
    q, outputs = calls[0]
    last = q[:, -1, :, None, :]  # [B, H, 1, d]
    hidden_units = torch.nn.functional.gelu(last @ weights[1].transpose(-1, -2))
    u = hidden_units @ weights[0].transpose(-1, -2)
    expected = last + torch.nn.functional.layer_norm(u, u.shape[-1:], eps=1e-5)
    torch.testing.assert_close(outputs[:, -1], expected[..., 0, :], **TOL)


def _cache_numbers(cache) -> int:
    return sum(t.numel() for layer in cache.layers for t in layer.recurrent_states.values() if t is not None)


@pytest.mark.parametrize("overrides", [{}, {"swa_layers": [1], "swa_window": 3, "memory_variant": "moneta"}])
def test_cache_size_is_constant_and_what_the_model_card_states(overrides):
    net = model(**overrides)
    card = render_model_card(net).text
    stated = int(re.search(r"the cache of this model holds\s+(\d+) numbers", card).group(1))
    per_block = int(re.search(r"\(`\d+ x 3 x 2 x 8`\): (\d+) numbers", card).group(1))
    assert per_block == 4 * 2 * 8 * 16 + 1 + 2 * 3 * 2 * 8
    prompt = torch.randint(0, 32, (1, 4), generator=torch.Generator().manual_seed(0))
    sizes = []
    for new_tokens in (1, 10):
        out = net.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True
        )
        sizes.append(_cache_numbers(out.cache))
    assert sizes == [stated, stated]
