"""Stuffed Mamba's sliding-window state (method 3): what it guarantees, exactly, and that it streams."""

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from hf_seqplugins.kernels.ssd import ssd
from hf_seqplugins.plugins.mamba2.modeling import sliding_window_scan
from hf_seqplugins.testing import tiny_config


def inputs(batch=2, steps=23, heads=2, head_dim=3, state=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, heads, head_dim, generator=g, dtype=torch.float64)
    dt = torch.rand(batch, steps, heads, generator=g, dtype=torch.float64)
    log_decay = -0.1 * torch.rand(batch, steps, heads, generator=g, dtype=torch.float64)
    B, C = (torch.randn(batch, steps, 1, state, generator=g, dtype=torch.float64) for _ in range(2))
    return x, dt, log_decay, B, C


def test_output_reads_exactly_the_tokens_since_the_previous_window_start():
    x, dt, log_decay, B, C = inputs()
    window = 5
    y, _ = sliding_window_scan(x, dt, log_decay, B, C, None, None, window)
    for t in range(x.shape[1]):
        start = 0 if t < window else window * (t // window - 1)
        part = slice(start, t + 1)
        expected, _ = ssd(x[:, part], dt[:, part], log_decay[:, part], B[:, part], C[:, part], backend="reference")
        torch.testing.assert_close(y[:, t], expected[:, -1], atol=1e-12, rtol=0)


def test_streams_across_calls_and_counts_only_real_tokens():
    x, dt, log_decay, B, C = inputs()
    y, _ = sliding_window_scan(x, dt, log_decay, B, C, None, None, 4)
    first, state = sliding_window_scan(x[:, :9], dt[:, :9], log_decay[:, :9], B[:, :9], C[:, :9], None, None, 4)
    rest, _ = sliding_window_scan(x[:, 9:], dt[:, 9:], log_decay[:, 9:], B[:, 9:], C[:, 9:], state, None, 4)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), y, atol=0, rtol=0)
    pad = lambda t: torch.cat([torch.randn_like(t[:, :3]), t], dim=1)  # noqa: E731  (garbage at 3 leading pads)
    mask = torch.cat([torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 23, dtype=torch.bool)], dim=1)
    padded, _ = sliding_window_scan(*(pad(t) for t in (x, dt, log_decay, B, C)), None, mask, 4)
    torch.testing.assert_close(padded[:, 3:], y, atol=1e-12, rtol=0)


@torch.no_grad()
def test_model_forgets_tokens_beyond_the_window_and_decodes_from_its_cache():
    window, kernel = 6, 3
    config = tiny_config(
        "seqp_mamba2",
        num_hidden_layers=1,
        attention_layers=[],
        sc_sliding_window=window,
        conv_kernel=kernel,
        initializer_range=0.3,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[:, :12] = (ids[:, :12] + 1) % config.vocab_size  # beyond the last position's window and the conv's reach
    torch.testing.assert_close(model(changed).logits[:, -1], model(ids).logits[:, -1], atol=1e-6, rtol=0)
    assert not torch.allclose(model(changed).logits[:, 12], model(ids).logits[:, 12])
    cache = DynamicCache(config=model.config)
    steps = [model(ids[:, :17], cache=cache, use_cache=True).logits]
    steps += [model(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(17, 30)]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(ids).logits, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_state_norm_clamps_per_real_tokens_so_left_padding_changes_nothing():
    config = tiny_config(
        "seqp_mamba2",
        num_hidden_layers=1,
        attention_layers=[],
        sc_state_norm_threshold=0.01,
        sc_state_norm_chunk=4,
        initializer_range=0.3,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 11), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 11)], dim=1).long()
    torch.testing.assert_close(
        model(padded, attention_mask=mask).logits[:, 3:], model(ids).logits, atol=1e-6, rtol=1e-5
    )
    cache = DynamicCache(config=model.config)
    model(ids, cache=cache, use_cache=True)
    assert torch.linalg.matrix_norm(model.model.layers[0].mixer.cached_ssm_state(cache)).max() <= 0.01 * (1 + 1e-6)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("sc_decay_scale", 1.5, "sc_decay_scale must be <= 1"),
        ("sc_decay_scale", 0, "sc_decay_scale must be a finite number > 0"),
        ("sc_sliding_window", 0, "sc_sliding_window"),
        ("sc_state_norm_threshold", -1, "sc_state_norm_threshold must be None, a number > 0"),
    ],
)
def test_options_edited_on_a_built_model_are_validated_where_they_are_read(field, value, message):
    """The README invites switching the sc_ options on a trained model: a bad value is refused at the next
    forward with the construction-time message, instead of NaN logits or a silently ignored setting."""
    model = AutoModelForCausalLM.from_config(tiny_config("seqp_mamba2")).eval()
    setattr(model.config, field, value)
    with pytest.raises(ValueError, match=message):
        model(torch.tensor([[1, 2, 3]]))


def test_state_norm_decoding_warns_and_chunk_one_makes_decoding_equal_a_forward():
    config = tiny_config("seqp_mamba2", attention_layers=[], sc_state_norm_threshold=0.05, sc_state_norm_chunk=4)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="sc_state_norm_chunk=1 for identical"):
        model.generate(ids[:, :3], max_new_tokens=2, do_sample=False)
    model.config.sc_state_norm_chunk = 1
    with torch.no_grad():
        full = model(ids).logits
        cache = DynamicCache(config=model.config)
        steps = [model(ids[:, :1], cache=cache, use_cache=True).logits]
        steps += [model(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(1, ids.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_a_per_layer_threshold_edited_on_a_built_model_is_checked_by_the_layer_reading_it():
    model = AutoModelForCausalLM.from_config(tiny_config("seqp_mamba2", attention_layers=[])).eval()
    config = model.config
    config.sc_state_norm_threshold = [[1.0] * config.num_heads for _ in range(config.num_hidden_layers)]
    model(torch.tensor([[1, 2, 3]]))
    config.sc_state_norm_threshold[-1][0] = -1.0  # edited in place, in the last layer's row
    with pytest.raises(ValueError, match="sc_state_norm_threshold must be None, a number > 0"):
        model(torch.tensor([[1, 2, 3]]))
