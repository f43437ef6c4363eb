"""seqp_xlstm against transformers' own xLSTM (`transformers.xLSTMForCausalLM`, native PyTorch kernels on CPU):
checkpoint conversion both ways (logits, round trip, generate, save/load, refusals) and the xLSTM-7B init."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, xLSTMConfig, xLSTMForCausalLM
from transformers.initialization import no_init_weights

import hf_seqplugins  # noqa: F401  (registers seqp_xlstm with the Auto classes)
from hf_seqplugins.plugins.xlstm import XLSTMConfig, XLSTMForCausalLM
from hf_seqplugins.plugins.xlstm.convert import (
    WEIGHT_MODES,
    config_from_transformers,
    config_to_transformers,
    from_transformers,
    state_dict_from_transformers,
    state_dict_to_transformers,
    to_transformers,
)
from hf_seqplugins.testing import tiny_config

VOCAB = 50
# Converted logits may differ from transformers' by float32 rounding only: |diff| <= ATOL * max |logit|.
ATOL = 1e-4


def hf_config(weight_mode: str = "single", **overrides) -> xLSTMConfig:
    """A tiny transformers xLSTM config. hidden_size 128 keeps D_qk = 64 and D_v = 128 multiples of 64, which
    transformers' xLSTMCache needs (it sizes states by rounded-up widths, the layers by int(D * factor)); small soft
    caps so both caps act on unit-scale activations. mode "inference" (transformers' default) runs the native
    chunkwise kernel on whole chunks and its native recurrent kernel on the rest, so any length works on CPU."""
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=128,
        num_hidden_layers=2,
        num_heads=2,
        chunk_size=4,
        qk_dim_factor=0.5,
        v_dim_factor=1.0,
        gate_soft_cap=3.0,
        output_logit_soft_cap=5.0,
        weight_mode=weight_mode,
        mode="inference",
    )
    return xLSTMConfig(**{**fields, **overrides})


def random_hf_model(config: xLSTMConfig, seed: int = 0) -> xLSTMForCausalLM:
    """transformers xLSTMForCausalLM with random float32 weights (unit-scale activations, norm weights near 1; the
    norm and feed-forward biases that use_bias adds are 0, as seqp_xlstm has none), eval mode. Built without
    transformers' init, which raises for weight_mode="fused"."""
    generator = torch.Generator().manual_seed(seed)
    with no_init_weights():
        model = xLSTMForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("bias") and ("norm" in name or ".ffn." in name):
                param.zero_()
            elif "norm" in name:
                param.copy_(1 + 0.1 * noise)
            elif param.dim() == 2:
                param.copy_(noise / math.sqrt(param.shape[1]))
            else:
                param.copy_(noise)
    return model.float().eval()


def random_ids(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """`[batch, length]` ids above the special tokens (0-2): generate infers padding from pad_token_id, which
    seqp_xlstm honours and transformers' xLSTM ignores."""
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_logits_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    scale = reference.abs().max().item()
    diff = (ours - reference).abs().max().item()
    assert diff <= ATOL * scale, f"max |diff| {diff:.3g} > {ATOL} * max |logit| {scale:.3g}"


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
@pytest.mark.parametrize("hidden_size, use_bias", [(32, True), (128, False)])
@pytest.mark.parametrize("mode, lengths", [("inference", (8, 11)), ("train", (8,))])
def test_converted_model_matches_transformers_and_converts_back_exactly(
    weight_mode, hidden_size, use_bias, mode, lengths
):
    """Lengths 8 (whole chunks of 4) and 11 (not: transformers' train mode refuses it); hidden_size 32 has
    D_qk = 16, a width transformers' cache cannot hold, so this runs without cache and converting back is refused."""
    hf = random_hf_model(hf_config(weight_mode, hidden_size=hidden_size, use_bias=use_bias, mode=mode))
    ours = from_transformers(hf)
    assert isinstance(ours, XLSTMForCausalLM) and not ours.training
    for length in lengths:
        ids = random_ids(length)
        assert_logits_close(logits(ours, ids), logits(hf, ids))

    if hidden_size * 0.5 % 64:  # transformers' own cache cannot hold D_qk = 16: converting back is refused
        with pytest.raises(ValueError, match=r"qk_dim_factor=0\.5 cannot be converted: .*multiples of 64"):
            to_transformers(ours, weight_mode=weight_mode)
        return
    back = to_transformers(ours, weight_mode=weight_mode)
    assert type(back) is xLSTMForCausalLM and back.config.weight_mode == weight_mode and back.config.mode == mode
    expected, got = hf.state_dict(), back.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    ids = random_ids(lengths[-1])
    assert torch.equal(logits(back.eval(), ids), logits(hf, ids))


def test_round_trip_from_our_side_keeps_config_and_weights():
    config = XLSTMConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        num_hidden_layers=2,
        num_heads=2,
        chunk_size=4,
        intermediate_size=384,
        use_bias=True,
    )
    ours = XLSTMForCausalLM(config).eval()
    for weight_mode in WEIGHT_MODES:
        hf_state = state_dict_to_transformers(ours.state_dict(), config, weight_mode)
        hf_cfg = config_to_transformers(config, weight_mode)
        back = state_dict_from_transformers(hf_state, hf_cfg)
        assert back.keys() == ours.state_dict().keys()
        assert all(torch.equal(back[key], value) for key, value in ours.state_dict().items())
        again = config_from_transformers(hf_cfg)
        assert again.intermediate_size == 384
        for field in (
            "hidden_size",
            "num_hidden_layers",
            "num_heads",
            "qk_dim_factor",
            "v_dim_factor",
            "gate_soft_cap",
            "output_logit_soft_cap",
            "norm_eps",
            "mlstm_eps",
            "chunk_size",
            "use_bias",
            "tie_word_embeddings",
        ):
            assert getattr(again, field) == getattr(config, field), field


def test_seven_b_config_converts_both_ways_unchanged():
    hf = xLSTMConfig()
    ours = config_from_transformers(hf)
    assert (ours.hidden_size, ours.num_hidden_layers, ours.num_heads, ours.intermediate_size) == (4096, 32, 8, 10944)
    assert (ours.qk_head_dim, ours.v_head_dim, ours.pad_token_id, ours.bos_token_id, ours.eos_token_id) == (
        256,
        512,
        1,
        0,
        2,
    )
    assert not ours.tie_word_embeddings
    assert config_to_transformers(ours).to_dict() == hf.to_dict()


def test_tied_model_exports_an_equal_lm_head_and_comes_back_tied():
    config = XLSTMConfig(
        vocab_size=VOCAB, hidden_size=128, num_hidden_layers=1, num_heads=2, chunk_size=4, tie_word_embeddings=True
    )
    ours = XLSTMForCausalLM(config).eval()
    hf = to_transformers(ours)
    assert hf.lm_head.weight is not hf.backbone.embeddings.weight
    assert torch.equal(hf.lm_head.weight, hf.backbone.embeddings.weight)
    ids = random_ids(6)
    assert_logits_close(logits(ours, ids), logits(hf, ids))
    back = from_transformers(hf)
    assert back.lm_head.weight is back.model.embed_tokens.weight


@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
def test_greedy_generate_matches_transformers(weight_mode):
    hf = random_hf_model(hf_config(weight_mode), seed=2)
    ours = from_transformers(hf)
    ids = random_ids(6)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    expected = hf.generate(ids, **kwargs)
    assert torch.equal(ours.generate(ids, **kwargs), expected)


def test_saved_conversion_reloads_with_auto_class(tmp_path):
    hf = random_hf_model(hf_config())
    ours = from_transformers(hf)
    ours.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is XLSTMForCausalLM
    ids = random_ids(9)
    assert torch.equal(logits(loaded, ids), logits(ours, ids))


@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
def test_from_transformers_loads_saved_checkpoints(weight_mode, tmp_path):
    """Fused checkpoints too, which transformers' own from_pretrained cannot build (its fused init raises)."""
    hf = random_hf_model(hf_config(weight_mode))
    hf.save_pretrained(tmp_path)
    from_path = from_transformers(tmp_path)
    from_instance = from_transformers(hf)
    assert all(torch.equal(value, from_instance.state_dict()[key]) for key, value in from_path.state_dict().items())
    assert from_transformers(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="dtype"):
        from_transformers(hf, dtype=torch.bfloat16)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"block_pattern": "ms", "slstm_num_heads": 2}, "block_pattern"),
        ({"input_gate": "sigmoid"}, "input_gate"),
        ({"output_logit_soft_cap": None}, "output_logit_soft_cap"),
        ({"gate_soft_cap": 0.0}, "gate_soft_cap"),
        ({"intermediate_size": 0}, "intermediate_size"),
        ({"hidden_size": 64}, "qk_dim_factor"),
        ({"v_dim_factor": 0.75}, "v_dim_factor"),
    ],
)
def test_export_refuses_what_transformers_cannot_represent(overrides, field):
    config = XLSTMConfig(
        **{
            "vocab_size": VOCAB,
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_heads": 2,
            "chunk_size": 4,
            **overrides,
        }
    )
    with pytest.raises(ValueError, match=rf"XLSTMConfig\.{field}="):
        config_to_transformers(config)
    with pytest.raises(ValueError, match=rf"XLSTMConfig\.{field}="):
        to_transformers(XLSTMForCausalLM(config))


def test_registry_tiny_config_with_slstm_blocks_is_refused():
    with pytest.raises(ValueError, match="block_pattern"):
        config_to_transformers(tiny_config("seqp_xlstm"))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"add_out_norm": False}, "add_out_norm"),
        ({"embedding_dim": 64}, "embedding_dim"),
        ({"num_blocks": 3}, "num_blocks"),
        ({"output_logit_soft_cap": 0.0}, "output_logit_soft_cap"),
    ],
)
def test_import_refuses_configs_seqp_xlstm_cannot_represent(overrides, field):
    with pytest.raises(ValueError, match=rf"xLSTMConfig\.{field}="):
        config_from_transformers(hf_config(**overrides))


def test_import_refuses_weights_seqp_xlstm_cannot_represent():
    hf = random_hf_model(hf_config(use_bias=True))
    state = hf.state_dict()
    state["backbone.blocks.1.mlstm_layer.multihead_norm.bias"] = torch.full_like(
        state["backbone.blocks.1.mlstm_layer.multihead_norm.bias"], 0.1
    )
    with pytest.raises(ValueError, match=r"use_bias=True.*blocks\.1\.mlstm_layer\.multihead_norm\.bias"):
        state_dict_from_transformers(state, hf.config)

    tied = hf_config(tie_word_embeddings=True)
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        state_dict_from_transformers(random_hf_model(tied).state_dict(), tied)

    state = dict(random_hf_model(hf_config()).state_dict(), **{"backbone.blocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="extra"):
        state_dict_from_transformers(state, hf_config())


HEADS, HIDDEN, BLOCKS = 4, 256, 4


@pytest.fixture(scope="module")
def fresh_model() -> XLSTMForCausalLM:
    config = XLSTMConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=BLOCKS, num_heads=HEADS, chunk_size=4)
    return XLSTMForCausalLM(config)


def assert_std(weight: torch.Tensor, expected: float) -> None:
    """Sample std within 10% of `expected` (the weights here have >= 16k entries: sampling error < 1%)."""
    assert abs(weight.std().item() / expected - 1) < 0.1, (weight.std().item(), expected)


def test_fresh_model_has_the_xlstm_7b_init(fresh_model):
    assert_std(fresh_model.model.embed_tokens.weight, math.sqrt(2 / (5 * HIDDEN)))
    for layer in fresh_model.model.layers:
        mixer = layer.mixer
        assert not mixer.igate_proj.weight.any() and not mixer.fgate_proj.weight.any()
        assert torch.equal(mixer.igate_proj.bias, torch.full((HEADS,), -10.0))
        assert torch.equal(mixer.fgate_proj.bias, torch.linspace(3.0, 6.0, HEADS))
        assert_std(mixer.out_proj.weight, 2 / (BLOCKS * math.sqrt(HIDDEN)))
        assert_std(mixer.q_proj.weight, math.sqrt(2 / (5 * HIDDEN)))


def test_fresh_model_has_the_wang_init_on_down_proj(fresh_model):
    for layer in fresh_model.model.layers:
        assert_std(layer.ffn.down_proj.weight, 2 / (BLOCKS * math.sqrt(fresh_model.config.intermediate_size)))


def test_logits_are_soft_capped():
    config = XLSTMConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_heads=2, chunk_size=4, output_logit_soft_cap=2.0
    )
    model = XLSTMForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
    out = logits(model, random_ids(5))
    assert out.abs().max() <= 2.0
    assert out.abs().max() > 1.9
