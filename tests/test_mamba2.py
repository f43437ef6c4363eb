"""seqp_mamba2 against transformers' own Mamba-2 (`transformers.Mamba2ForCausalLM`, its pure-PyTorch path on
CPU): checkpoint conversion both ways (logits, round trip, generate, save/load, refusals), then the plugin's own
contracts that the conversion relies on: left padding, the state-collapse options and the mamba_ssm init."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from transformers import Mamba2Config as HFMamba2Config
from transformers import Mamba2ForCausalLM as HFMamba2ForCausalLM

import hf_seqplugins  # noqa: F401  (registers seqp_mamba2 with the Auto classes)
from hf_seqplugins.plugins.mamba2 import Mamba2Config, Mamba2ForCausalLM
from hf_seqplugins.plugins.mamba2 import modeling as mamba2_modeling
from hf_seqplugins.plugins.mamba2.convert import (
    config_from_transformers,
    config_to_transformers,
    from_transformers,
    state_dict_from_transformers,
    state_dict_to_transformers,
    to_transformers,
)

VOCAB = 50
BACKEND = "torch"
# Converted logits may differ from transformers' by float32 rounding only: |diff| <= ATOL * max |logit|.
ATOL = 1e-5


def hf_config(**overrides) -> HFMamba2Config:
    """A tiny transformers Mamba-2: hidden 32, expand 2, head_dim 8 (8 heads), state 8, conv kernel 4."""
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=8,
        head_dim=8,
        state_size=8,
        n_groups=2,
        expand=2,
        conv_kernel=4,
        chunk_size=4,
    )
    return HFMamba2Config(**{**fields, **overrides})


def random_hf_model(config: HFMamba2Config, seed: int = 0) -> HFMamba2ForCausalLM:
    """transformers Mamba2ForCausalLM with random float32 weights giving unit-scale activations: projections
    N(0, 1/fan_in), norm weights near 1, biases small, softplus(dt_bias) mostly in [0.1, 2], A = -exp(A_log) in
    about [-3, -0.3], D ~ N(0, 1); eval mode."""
    generator = torch.Generator().manual_seed(seed)
    model = HFMamba2ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name:
                param.copy_(1 + 0.1 * noise)
            elif name.endswith("conv1d.weight"):
                param.copy_(noise / math.sqrt(param.shape[-1]))
            elif param.dim() == 2:
                param.copy_(noise / math.sqrt(param.shape[1]))
            elif name.endswith("bias") and not name.endswith("dt_bias"):
                param.copy_(0.1 * noise)
            elif name.endswith("A_log"):
                param.copy_(0.5 * noise)
            else:
                param.copy_(noise)
    return model.float().eval()


def convert(hf_model: HFMamba2ForCausalLM) -> Mamba2ForCausalLM:
    model = from_transformers(hf_model)
    model.config.kernel_backend = BACKEND
    return model


def random_ids(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """`[batch, length]` ids above the special tokens (0-2: bos, pad, eos of transformers' Mamba-2 config)."""
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_logits_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    scale = reference.abs().max().item()
    diff = (ours - reference).abs().max().item()
    assert diff <= ATOL * scale, f"max |diff| {diff:.3g} > {ATOL} * max |logit| {scale:.3g}"


def logits(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False, **kwargs).logits


@pytest.mark.parametrize(
    "overrides, lengths",
    [
        ({}, (8, 11)),
        ({"n_groups": 1, "use_bias": True, "use_conv_bias": False, "chunk_size": 8}, (16, 13)),
        ({"tie_word_embeddings": True, "conv_kernel": 3}, (12, 3)),
    ],
)
def test_converted_model_matches_transformers_and_converts_back_exactly(overrides, lengths):
    """Each case runs a length that is a multiple of chunk_size and one that is not (3: shorter than a chunk)."""
    hf = random_hf_model(hf_config(**overrides))
    ours = convert(hf)
    assert isinstance(ours, Mamba2ForCausalLM) and not ours.training
    for length in lengths:
        ids = random_ids(length)
        assert_logits_close(logits(ours, ids), logits(hf, ids))

    back = to_transformers(ours)
    assert type(back) is HFMamba2ForCausalLM and not back.config.residual_in_fp32
    expected, got = hf.state_dict(), back.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    ids = random_ids(lengths[0])
    assert torch.equal(logits(back, ids), logits(hf, ids))


def test_config_fields_survive_both_ways():
    hf = hf_config(
        layer_norm_epsilon=1e-6,
        time_step_min=0.002,
        time_step_max=0.2,
        time_step_floor=1e-3,
        time_step_limit=(0.0, 5.0),
        initializer_range=0.05,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=[2, 3],
    )
    ours = config_from_transformers(hf)
    assert (ours.num_heads, ours.d_inner, ours.norm_eps, ours.intermediate_size) == (8, 64, 1e-6, 0)
    assert ours.time_step_limit == (0.0, 5.0) and ours.eos_token_id == [2, 3]
    again = config_to_transformers(ours)
    fields = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_heads",
        "head_dim",
        "state_size",
        "n_groups",
        "expand",
        "conv_kernel",
        "use_conv_bias",
        "use_bias",
        "chunk_size",
        "time_step_min",
        "time_step_max",
        "time_step_floor",
        "layer_norm_epsilon",
        "initializer_range",
        "tie_word_embeddings",
        "use_cache",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "hidden_act",
    )
    for field in fields:
        assert getattr(again, field) == getattr(hf, field), field
    assert tuple(again.time_step_limit) == (0.0, 5.0)


def test_codestral_sized_config_converts():
    """transformers' defaults (the mamba-codestral-7B layout: 64 layers, 128 heads of 64, 8 groups)."""
    ours = config_from_transformers(HFMamba2Config())
    assert (ours.hidden_size, ours.num_heads, ours.n_groups, ours.state_size, ours.chunk_size) == (
        4096,
        128,
        8,
        128,
        256,
    )
    assert not ours.tie_word_embeddings
    assert config_to_transformers(ours).num_heads == 128


def test_our_state_dict_converts_back_unchanged():
    config = Mamba2Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, head_dim=8, state_size=8, n_groups=2, use_bias=True
    )
    ours = Mamba2ForCausalLM(config)
    state = ours.state_dict()
    back = state_dict_from_transformers(state_dict_to_transformers(state, config), config_to_transformers(config))
    assert back.keys() == state.keys()
    assert all(
        back[key].data_ptr() == value.data_ptr() and torch.equal(back[key], value) for key, value in state.items()
    )


@pytest.mark.parametrize("n_groups", [1, 2])
def test_greedy_generate_matches_transformers(n_groups):
    """transformers' own generate (cached: chunked prefill, then its one-token recurrent step) on CPU: the same
    tokens, and each step's logits within the forward tolerance."""
    hf = random_hf_model(hf_config(n_groups=n_groups), seed=2)
    ours = convert(hf)
    ids = random_ids(6)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=8,
        min_new_tokens=8,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )
    got, expected = ours.generate(ids, **kwargs), hf.generate(ids, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    for step_logits, reference in zip(got.logits, expected.logits, strict=True):
        assert_logits_close(step_logits, reference)


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded `[len(rows), max length]` ids and their attention mask."""
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    return ids, mask


def test_left_padded_batch_equals_each_row_alone():
    """Our contract (transformers' Mamba-2 lets the decay run over padding, so it is not the reference here)."""
    ours = convert(random_hf_model(hf_config(), seed=3))
    rows = [random_ids(length, batch=1, seed=length)[0] for length in (11, 6, 2)]
    ids, mask = left_pad(rows, ours.config.pad_token_id)
    batch_logits = logits(ours, ids, attention_mask=mask)
    for i, row in enumerate(rows):
        assert_logits_close(batch_logits[i, -len(row) :], logits(ours, row[None])[0])

    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    batch_out = ours.generate(ids, attention_mask=mask, **kwargs)
    for i, row in enumerate(rows):
        assert torch.equal(batch_out[i, ids.shape[1] :], ours.generate(row[None], **kwargs)[0, len(row) :])


def test_saved_conversion_reloads_with_auto_class(tmp_path):
    ours = convert(random_hf_model(hf_config()))
    ours.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is Mamba2ForCausalLM
    ids = random_ids(9)
    assert torch.equal(logits(loaded, ids), logits(ours, ids))


def test_from_transformers_loads_saved_checkpoints(tmp_path):
    hf = random_hf_model(hf_config(tie_word_embeddings=True))
    hf.save_pretrained(tmp_path)
    from_path, from_instance = from_transformers(tmp_path), from_transformers(hf)
    assert from_path.lm_head.weight is from_path.model.embed_tokens.weight
    assert all(torch.equal(value, from_instance.state_dict()[key]) for key, value in from_path.state_dict().items())
    assert from_transformers(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="dtype"):
        from_transformers(hf, dtype=torch.bfloat16)


def plain_config(**overrides) -> Mamba2Config:
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        head_dim=8,
        state_size=8,
        n_groups=2,
        chunk_size=4,
        kernel_backend=BACKEND,
    )
    return Mamba2Config(**{**fields, **overrides})


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"sc_decay_scale": 0.999}, "sc_decay_scale"),
        ({"sc_input_scale": 0.7}, "sc_input_scale"),
        ({"sc_dt_scale": 0.2}, "sc_dt_scale"),
        ({"sc_state_norm_threshold": 1.0}, "sc_state_norm_threshold"),
        ({"sc_sliding_window": 8}, "sc_sliding_window"),
        ({"intermediate_size": 16}, "intermediate_size"),
        ({"xb_heads": 2, "n_groups": 8}, "xb_heads"),
        ({"attention_layers": [1]}, "attention_layers"),
        ({"output_logit_soft_cap": 30.0}, "output_logit_soft_cap"),
    ],
)
def test_export_refuses_what_transformers_cannot_represent(overrides, field):
    config = plain_config(**overrides)
    with pytest.raises(ValueError, match=rf"Mamba2Config\.{field}="):
        config_to_transformers(config)
    with pytest.raises(ValueError, match=rf"Mamba2Config\.{field}="):
        to_transformers(Mamba2ForCausalLM(config))


def test_export_accepts_the_unused_state_norm_chunk():
    assert config_to_transformers(plain_config(sc_state_norm_chunk=16)).num_heads == 8


def test_import_refuses_configs_seqp_mamba2_cannot_represent():
    with pytest.raises(ValueError, match=r"Mamba2Config\.hidden_act='gelu'"):
        config_from_transformers(hf_config(hidden_act="gelu"))
    inconsistent = hf_config()
    inconsistent.num_heads = 4  # transformers validates this only when constructing the config
    with pytest.raises(ValueError, match=r"Mamba2Config\.num_heads=4"):
        config_from_transformers(inconsistent)


def test_import_refuses_weights_seqp_mamba2_cannot_represent():
    tied = hf_config(tie_word_embeddings=True)
    state = dict(random_hf_model(tied).state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        state_dict_from_transformers(state, tied)

    state = dict(random_hf_model(hf_config()).state_dict(), **{"backbone.layers.0.mixer.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="extra"):
        state_dict_from_transformers(state, hf_config())


def ssm_states(model, cache) -> list[torch.Tensor]:
    """Per layer, the cached SSM state `[B, H, P, N]`."""
    return [layer.mixer.cached_ssm_state(cache) for layer in model.model.layers]


def state_norms(model, cache) -> torch.Tensor:
    """`[L, B, H]` Frobenius norms of each head's cached SSM state."""
    return torch.stack([torch.linalg.matrix_norm(state) for state in ssm_states(model, cache)])


def prefill_and_decode(model, ids: torch.Tensor, steps: int, seed: int = 5):
    """Run `ids`, then `steps` random tokens one at a time; yield the cache after the prefill and each step."""
    # no_grad around each call only: a `with` around the yields would leave gradients off in the caller
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
    yield cache
    for _ in range(steps):
        token = torch.randint(3, VOCAB, (ids.shape[0], 1), generator=generator)
        with torch.no_grad():
            cache = model(token, cache=cache, use_cache=True).cache
        yield cache


def with_options(model: Mamba2ForCausalLM, **options) -> Mamba2ForCausalLM:
    """A copy of `model` (same weights) whose config adds `options`."""
    config = Mamba2Config(**{**model.config.to_dict(), **options})
    copy = Mamba2ForCausalLM(config).eval()
    copy.load_state_dict(model.state_dict())
    return copy


def test_state_collapse_options_at_their_defaults_change_nothing():
    """Explicit no-op values are bit-identical to the plain model (forward, cached states, generation); an
    infinite state-norm threshold takes the piecewise prefill path and matches up to float rounding."""
    plain = convert(random_hf_model(hf_config()))
    explicit = with_options(
        plain,
        sc_decay_scale=1,
        sc_input_scale=1.0,
        sc_dt_scale=1.0,
        sc_state_norm_threshold=None,
        sc_sliding_window=None,
    )
    ids = random_ids(13)
    assert torch.equal(logits(explicit, ids), logits(plain, ids))
    for ours, reference in zip(prefill_and_decode(explicit, ids, 3), prefill_and_decode(plain, ids, 3)):
        assert all(torch.equal(a, b) for a, b in zip(ssm_states(explicit, ours), ssm_states(plain, reference)))
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(explicit.generate(ids, **kwargs), plain.generate(ids, **kwargs))

    unbounded = with_options(plain, sc_state_norm_threshold=math.inf, sc_state_norm_chunk=4)
    assert_logits_close(logits(unbounded, ids), logits(plain, ids))


@pytest.mark.parametrize("per_head", [False, True])
def test_state_norm_threshold_bounds_every_cached_state(per_head):
    """τ is half the smallest largest-head norm of any layer that the plain model's cache holds after the prefill
    and each decoding step (per head: half the smallest norm of that head), so it binds everywhere."""
    plain = convert(random_hf_model(hf_config(), seed=4))
    ids, steps = random_ids(20), 6
    free = torch.stack(
        [state_norms(plain, cache) for cache in prefill_and_decode(plain, ids, steps)]
    )  # [steps + 1, L, B, H]
    smallest = free.amax(2).amin(0)  # [L, H]
    tau = (smallest / 2).tolist() if per_head else smallest.amax(-1).min().item() / 2
    limits = smallest / 2 if per_head else torch.full_like(smallest, tau)
    bounded = with_options(plain, sc_state_norm_threshold=tau, sc_state_norm_chunk=8)
    for step, cache in enumerate(prefill_and_decode(bounded, ids, steps)):
        assert (state_norms(bounded, cache) <= limits[:, None] * (1 + 1e-6)).all(), step
        assert (free[step] > limits[:, None]).any(-1).any(-1).all(), step


def test_decay_scale_bounds_the_state_far_past_the_prompt(monkeypatch):
    """λ_α = 0.95 with A ≈ 0 (no decay of its own) and large steps: over a 2000-token prefill and 200 decoding
    steps after it, every head's state stays within sup_s ||Δ_s x_s ⊗ B_s||_F / (1 - λ_α) (sup over the tokens so
    far), a bound the plain model's state exceeds by the end of the prefill."""
    decay_scale, prompt, steps = 0.95, random_ids(2000), 200
    hf = random_hf_model(hf_config(num_hidden_layers=1), seed=6)
    with torch.no_grad():
        hf.backbone.layers[0].mixer.A_log.fill_(-20.0)
        hf.backbone.layers[0].mixer.dt_bias.fill_(2.0)
    plain = convert(hf)
    bounded = with_options(plain, sc_decay_scale=decay_scale)

    inputs = []  # the SSD inputs (x, dt, B) of each call

    def recording_ssd(x, dt, log_decay, B, C, *args, **kwargs):
        inputs.append((x, dt, B))
        return ssd(x, dt, log_decay, B, C, *args, **kwargs)

    ssd = mamba2_modeling.ssd
    monkeypatch.setattr(mamba2_modeling, "ssd", recording_ssd)
    heads_per_group = plain.config.num_heads // plain.config.n_groups

    def largest_input(x, dt, B) -> torch.Tensor:
        """`[B, H]` max over time of ||Δ x ⊗ B||_F = Δ ||x|| ||B|| (B of the head's group)."""
        return (dt * x.norm(dim=-1) * B.norm(dim=-1).repeat_interleave(heads_per_group, dim=-1)).amax(1)

    sup = torch.zeros(prompt.shape[0], plain.config.num_heads)
    for cache in prefill_and_decode(bounded, prompt, steps):
        sup = torch.maximum(sup, largest_input(*inputs[-1]))
        assert (state_norms(bounded, cache)[0] <= sup / (1 - decay_scale) * (1 + 1e-5)).all()
    prefill_bound = largest_input(*inputs[0]) / (1 - decay_scale)
    assert (state_norms(plain, next(prefill_and_decode(plain, prompt, 0)))[0] > prefill_bound).all()


@pytest.mark.parametrize(
    "overrides",
    [{}, {"time_step_min": 1e-4, "time_step_max": 0.5, "time_step_floor": 1e-2, "A_init_range": (2.0, 4.0)}],
)
def test_fresh_model_has_the_mamba_ssm_init(overrides):
    config = plain_config(hidden_size=64, head_dim=4, **overrides)  # 32 heads per layer
    model = Mamba2ForCausalLM(config)
    low, high = config.A_init_range
    for layer in model.model.layers:
        mixer = layer.mixer
        A = -torch.exp(mixer.A_log)
        assert ((A <= -low * (1 - 1e-6)) & (A >= -high * (1 + 1e-6))).all()
        dt = F.softplus(mixer.dt_bias)
        assert (dt >= max(config.time_step_min, config.time_step_floor) * (1 - 1e-5)).all()
        assert (dt <= config.time_step_max * (1 + 1e-5)).all()
        assert torch.equal(mixer.D, torch.ones_like(mixer.D))
