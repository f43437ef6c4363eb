"""The S4 / S4D / LSSL plugin: layer-level recurrence checks in float64 (`docs/architectures/s4.md`, section 'Tests and
cross-checks'), initialisations, bidirectional classification, the SSM parameter groups and config validation. The
generic contracts (backends, generate, cache, save/load, PEFT, Trainer) are in the conformance suite."""

import math

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    DynamicCache,
    Trainer,
    TrainingArguments,
)

from hf_seqplugins.core.backends import use_backend
from hf_seqplugins.core.optim import optimizer_cls_and_kwargs, parameter_groups
from hf_seqplugins.core.registry import load_plugins
from hf_seqplugins.testing import tiny_config

MODEL_TYPES = ["seqp_s4", "seqp_s4d", "seqp_lssl"]
VARIANTS = [
    ("seqp_s4", {}),
    ("seqp_s4", {"rank": 2, "n_ssm": 4, "dt_transform": "softplus", "channels": 2}),
    ("seqp_s4d", {}),
    ("seqp_s4d", {"init": "diag-inv", "discretization": "bilinear"}),
    ("seqp_s4d", {"init": "diag-real"}),
    ("seqp_s4d", {"init": "legs", "n_ssm": 1}),
    ("seqp_lssl", {}),
    ("seqp_lssl", {"learn_ab": 0, "measure": "legt", "alpha": 1.0, "dt_init": "uniform"}),
    ("seqp_lssl", {"learn_ab": 2, "alpha": 0.0, "channels": 3}),
]


def causal_lm(model_type, **overrides):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(model_type, initializer_range=0.3, **overrides)).eval()


@pytest.mark.parametrize("model_type,overrides", VARIANTS)
@torch.no_grad()
def test_convolution_prefill_and_steps_equal_the_recurrence_float64(model_type, overrides):
    model = causal_lm(model_type, **overrides).double()
    ids = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(0))
    convolution = model(ids, use_cache=False).logits
    with use_backend("reference"):
        recurrence = model(ids, use_cache=False).logits
    torch.testing.assert_close(convolution, recurrence, atol=1e-10, rtol=1e-10)
    cache = DynamicCache(config=model.config)
    pieces = [model(ids[:, :7], cache=cache, use_cache=True).logits]
    pieces += [model(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(pieces, 1), convolution, atol=1e-10, rtol=1e-10)


def test_longer_than_l_max_doubles_the_kernel_without_changing_the_model():
    """S4's C̃ refers to l_max; a 40-token input (l_max 8: three doublings) still equals the recurrence."""
    model = causal_lm("seqp_s4").double()
    ids = torch.randint(0, 32, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        convolution = model(ids).logits
        with use_backend("reference"):
            torch.testing.assert_close(convolution, model(ids).logits, atol=1e-9, rtol=1e-9)


def test_initialisations_follow_the_spec():
    n = torch.arange(4, dtype=torch.float64)
    expected_imag = {
        "diag-lin": math.pi * n,
        "diag-inv": (8 / math.pi) * (8 / (2 * n + 1) - 1),
        "diag-real": torch.zeros(4, dtype=torch.float64),
    }
    for init, imag in expected_imag.items():
        mixer = causal_lm("seqp_s4d", init=init).model.layers[0].mixer
        real = -torch.exp(mixer.A_real.double())
        expected_real = -(n + 1) if init == "diag-real" else torch.full_like(n, -0.5)
        torch.testing.assert_close(real[0], expected_real, rtol=1e-6, atol=0)
        torch.testing.assert_close(mixer.A_imag[0].double(), imag, rtol=1e-6, atol=1e-6)
        assert torch.all(torch.view_as_complex(mixer.B) == 1)
    dt = torch.exp(causal_lm("seqp_s4d").model.layers[0].mixer.dt_param)
    assert torch.all((dt >= 1e-3) & (dt <= 1e-1))
    s4 = causal_lm("seqp_s4").model.layers[0].mixer
    assert torch.all(torch.view_as_complex(s4.B).imag.abs() <= 2.0)
    assert torch.all(-torch.exp(s4.A_real) < 0)


def test_s4_learns_c_tilde_of_a_random_c():
    """At init C̃ = C (I - Ā^L) for a C with complex-normal entries: the recovered C has unit-variance parts' scale."""
    mixer = causal_lm("seqp_s4", hidden_size=64, state_size=16).model.layers[0].mixer
    c = mixer.system(torch.float64).dense().c
    assert 0.4 < c.abs().pow(2).mean().item() < 1.6


def test_bidirectional_classification_sees_the_whole_sequence_and_ignores_padding():
    torch.manual_seed(0)
    config = tiny_config("seqp_s4d", bidirectional=True, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids = torch.randint(1, 32, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state
        changed = ids.clone()
        changed[0, -1] = (changed[0, -1] + 1) % 32
        assert not torch.allclose(model.model(changed).last_hidden_state[0, 0], hidden[0, 0]), (
            "the first position must see the last token"
        )
        expected = model(ids).logits
        for padded, mask in (
            (torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1), torch.tensor([[0] * 3 + [1] * 6])),
            (torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1), torch.tensor([[1] * 6 + [0] * 3])),
        ):
            torch.testing.assert_close(model(padded, attention_mask=mask).logits, expected, atol=1e-5, rtol=1e-4)
        with use_backend("reference"):
            torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-4)


def test_bidirectional_models_cannot_be_causal():
    with pytest.raises(ValueError, match="bidirectional"):
        AutoModelForCausalLM.from_config(tiny_config("seqp_s4", bidirectional=True))
    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_config(
        tiny_config("seqp_s4", bidirectional=True, num_labels=2)
    )
    with pytest.raises(ValueError, match="cannot run with a cache"):
        classifier.model(torch.ones(1, 3, dtype=torch.long), use_cache=True)


@pytest.mark.parametrize(
    "model_type,expected",
    [
        ("seqp_s4", {"dt_param", "A_real", "A_imag", "B", "P"}),
        ("seqp_s4d", {"dt_param", "A_real", "A_imag", "B"}),
        ("seqp_lssl", {"dt_param", "A", "B"}),
    ],
)
def test_ssm_parameters_get_their_own_group(model_type, expected, tmp_path):
    model = causal_lm(model_type)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # settings must survive loading
    names = {id(p): n for n, p in loaded.named_parameters()}
    groups = parameter_groups(loaded, weight_decay=0.1)
    special = [g for g in groups if "lr" in g]
    assert all(g["weight_decay"] == 0.0 for g in special)
    assert {names[id(p)].rsplit(".", 1)[-1] for g in special for p in g["params"]} == expected
    decayed = [names[id(p)] for g in groups if g["weight_decay"] == 0.1 for p in g["params"]]
    assert any(n.endswith("mixer.C") for n in decayed) and not any("norm" in n or n.endswith("bias") for n in decayed)
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in loaded.parameters() if p.requires_grad)
    if model_type == "seqp_lssl":
        assert sorted(g["lr"] for g in special) == [1e-4, 1e-3]


def test_trainer_takes_the_groups(tmp_path):
    model = causal_lm("seqp_s4d", ssm_lr=5e-4)
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-2, weight_decay=0.05, report_to=[], use_cpu=True
    )
    trainer = Trainer(model=model, args=args, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, args))
    optimizer = trainer.create_optimizer()
    settings = sorted((g["lr"], g["weight_decay"]) for g in optimizer.param_groups)
    assert (5e-4, 0.0) in settings and (1e-2, 0.05) in settings and (1e-2, 0.0) in settings


def test_without_ssm_lr_the_ssm_parameters_only_skip_weight_decay():
    groups = parameter_groups(causal_lm("seqp_s4d", ssm_lr=None), weight_decay=0.1)
    assert all("lr" not in g for g in groups)
    assert sum(p.numel() for g in groups if g["weight_decay"] == 0.0 for p in g["params"]) > 0


def test_lssl_fixed_hippo_is_not_a_parameter():
    model = causal_lm("seqp_lssl", learn_ab=0, dt_learn=False)
    mixer = model.model.layers[0].mixer
    assert mixer.A is None and not mixer.dt_param.requires_grad
    assert set(n.rsplit(".", 1)[-1] for n, p in mixer.named_parameters() if p.requires_grad) == {
        "C",
        "D",
        "weight",
        "bias",
    }


@torch.no_grad()
def test_decoding_reuses_the_dense_system_until_a_parameter_changes():
    model = causal_lm("seqp_s4")
    mixer = model.model.layers[0].mixer
    first = mixer.decoding_system(torch.float32)
    assert mixer.decoding_system(torch.float32) is first
    mixer.dt_param.add_(0.1)
    assert mixer.decoding_system(torch.float32) is not first


@pytest.mark.parametrize(
    "model_type,field,value",
    [
        ("seqp_s4", "state_size", 7),
        ("seqp_s4", "n_ssm", 3),
        ("seqp_s4", "init", "diag-lin"),
        ("seqp_s4", "discretization", "zoh"),
        ("seqp_s4", "l_max", 0),
        ("seqp_s4d", "init", "hippo-magic"),
        ("seqp_s4d", "dt_transform", "square"),
        ("seqp_s4d", "activation", "swish-ish"),
        ("seqp_s4d", "final_act", "gated"),
        ("seqp_s4d", "ssm_dropout", 1.0),
        ("seqp_s4d", "ssm_lr", 0.0),
        ("seqp_s4d", "dt_min", 1.0),
        ("seqp_s4d", "channels", 0),
        ("seqp_lssl", "learn_ab", 3),
        ("seqp_lssl", "measure", "fourier"),
        ("seqp_lssl", "alpha", 1.5),
        ("seqp_lssl", "dt_init", "zeros"),
    ],
)
def test_invalid_fields_are_named(model_type, field, value):
    with pytest.raises(ValueError, match=field if field != "dt_min" else "dt_min <= dt_max"):
        AutoConfig.for_model(model_type, **{**load_plugins()[model_type].tiny_config, field: value})


def test_state_space_runs_outside_autocast(monkeypatch):
    """Kernels, FFTs and states stay float32 under bf16 autocast; the output layer may use bf16."""
    from hf_seqplugins.plugins.s4 import modeling

    seen = []

    def recording(u, system, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), system.state_dtype))
        return original(u, system, *args, **kwargs)

    original = modeling.lti_ssm
    monkeypatch.setattr(modeling, "lti_ssm", recording)
    model = causal_lm("seqp_s4d")
    ids = torch.randint(0, 32, (1, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids).logits
    assert seen and all(not enabled and dtype == torch.complex64 for enabled, dtype in seen)
    assert torch.isfinite(logits).all()
