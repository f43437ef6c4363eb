"""JRT-RNN (`seqp_jrt`), what is specific to it, in float64: prefix linear attention against its explicit
quadratic form (encoder sums over the first M real tokens seen by every position, causal Taylor sums); with
M = 0 it is causal Taylor linear attention; the parallel forward at positions i >= M equals a prefill (at least M
real tokens, left-padded too) then recurrent steps, for the mixer and the whole model; the sliding-window
attention against explicit windowed softmax attention; the gated convolution skips padding anywhere in a row; a
decode step after a prefill shorter than M raises; the collator's inputs and labels; the loss split
``NTP(labels) + mlm_weight * MLM(mlm_targets)``; config errors. The generic model checks run in the conformance
suite (`tests/test_conformance.py`).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, DynamicCache

from hf_seqplugins.kernels.feature_linear_attention import taylor_features
from hf_seqplugins.plugins.jrt import (
    BaseConv,
    JRTConfig,
    JRTDataCollator,
    JRTForCausalLM,
    PrefixLinearAttention,
    SlidingWindowAttention,
)

TOL = {"atol": 1e-12, "rtol": 1e-10}
SMALL = {
    "vocab_size": 40,
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "intermediate_size": 32,
    "num_heads": 2,
    "feature_dim": 3,
    "pla_layers": [0],
    "swa_layers": [1],
    "swa_window": 3,
    "conv_expand": 2,
    "chunk_size": 4,
    "mask_token_id": 39,
}


def config(**overrides) -> JRTConfig:
    return JRTConfig(**{**SMALL, "enc_length": 4, **overrides})


def hidden(batch=2, steps=11, seed=0) -> torch.Tensor:
    return torch.randn(batch, steps, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def pla(cfg: JRTConfig) -> PrefixLinearAttention:
    torch.manual_seed(0)
    return PrefixLinearAttention(cfg, 0).double()


def explicit_pla(mixer: PrefixLinearAttention, x: torch.Tensor, enc_length: int) -> torch.Tensor:
    """y_i = phi(q_i)^T (S_enc + sum_{j<=i} phi(k_j) v_j^T) / (phi(q_i)^T (z_enc + sum_{j<=i} phi(k_j)) + eps) from
    the kernel ``phi(a) . phi(b) = 1 + s + s^2 / 2``, ``s = a . b / sqrt(f)``, S_enc over the first M tokens."""
    batch, steps, _ = x.shape
    heads, f = mixer.num_heads, mixer.feature_dim

    def project(p, size):
        return p(x).view(batch, steps, heads, size)

    q, k, v = project(mixer.q_proj, f), project(mixer.k_proj, f), project(mixer.v_proj, mixer.head_dim)
    k_enc, v_enc = project(mixer.k_enc_proj, f), project(mixer.v_enc_proj, mixer.head_dim)

    def kernel(a, b):
        s = torch.einsum("bihf,bjhf->bhij", a, b) / math.sqrt(f)
        return 1 + s + s**2 / 2

    causal = torch.tril(kernel(q, k))  # [b, h, i, j]
    encoder = kernel(q, k_enc[:, :enc_length])
    numerator = causal @ v.transpose(1, 2) + encoder @ v_enc[:, :enc_length].transpose(1, 2)
    denominator = causal.sum(-1) + encoder.sum(-1) + mixer.config.eps
    y = (numerator / denominator[..., None]).transpose(1, 2).reshape(batch, steps, -1)
    return mixer.out_proj(y)


@pytest.mark.parametrize("enc_length", [0, 1, 4, 11, 20])
def test_prefix_linear_attention_equals_its_explicit_form(enc_length):
    cfg = config(enc_length=enc_length)
    mixer, x = pla(cfg), hidden()
    torch.testing.assert_close(mixer(x), explicit_pla(mixer, x, min(enc_length, x.shape[1])), **TOL)


def test_without_encoder_it_is_causal_taylor_linear_attention():
    mixer, x = pla(config(enc_length=0)), hidden()
    batch, steps, _ = x.shape
    q = taylor_features(mixer.q_proj(x).view(batch, steps, 2, 3))
    k = taylor_features(mixer.k_proj(x).view(batch, steps, 2, 3))
    v = mixer.v_proj(x).view(batch, steps, 2, 8)
    weights = torch.tril(torch.einsum("bihf,bjhf->bhij", q, k))
    y = torch.einsum("bhij,bjhd->bihd", weights, v) / (weights.sum(-1).transpose(1, 2)[..., None] + 1e-12)
    torch.testing.assert_close(mixer(x), mixer.out_proj(y.reshape(batch, steps, -1)), **TOL)


@pytest.mark.parametrize("prefill", [4, 7])
def test_decoding_after_a_prefill_equals_the_parallel_form(prefill):
    cfg = config()
    mixer, x = pla(cfg), hidden()
    full = mixer(x)
    cache = DynamicCache(config=cfg)
    steps = [mixer(x[:, :prefill], cache=cache)]
    steps += [mixer(x[:, t : t + 1], cache=cache) for t in range(prefill, x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_left_padded_prefill_reads_the_first_real_tokens_as_encoder():
    cfg = config()
    mixer, x = pla(cfg), hidden(batch=1)
    padded = torch.cat([torch.full((1, 3, 16), float("nan"), dtype=torch.float64), x], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * x.shape[1]])
    cache = DynamicCache(config=cfg)
    out = mixer(padded[:, :8], cache=cache, attention_mask=mask[:, :8])
    rest = [mixer(padded[:, t : t + 1], cache=cache) for t in range(8, padded.shape[1])]
    torch.testing.assert_close(torch.cat([out[:, 3:], *rest], dim=1), explicit_pla(mixer, x, 4), **TOL)


def test_model_decoding_equals_the_full_forward_in_float64():
    cfg = config()
    torch.manual_seed(0)
    model = JRTForCausalLM(cfg).double().eval()
    ids = torch.randint(0, 39, (2, 12), generator=torch.Generator().manual_seed(1))
    full = model(ids, use_cache=False).logits
    cache = DynamicCache(config=cfg)
    steps = [model(ids[:, :5], cache=cache, use_cache=True).logits]
    steps += [model(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_decoding_after_a_prefill_shorter_than_the_encoder_region_raises():
    cfg = config()
    mixer, x = pla(cfg), hidden()
    cache = DynamicCache(config=cfg)
    mixer(x[:, :3], cache=cache)
    with pytest.raises(ValueError, match=r"prefill of only 3 real tokens.*enc_length = 4.*left-pad"):
        mixer(x[:, 3:4], cache=cache)
    torch.manual_seed(0)
    model = JRTForCausalLM(cfg).eval()
    with pytest.raises(ValueError, match="enc_length = 4"):
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
    padded = torch.tensor([[0, 1, 2, 3]])  # left padding the attention mask drops does not fill the region
    with pytest.raises(ValueError, match="only 3 real tokens"):
        model.generate(padded, attention_mask=torch.tensor([[0, 1, 1, 1]]), max_new_tokens=2, do_sample=False)


def test_sliding_window_attention_equals_explicit_windowed_attention():
    cfg = config()
    torch.manual_seed(0)
    mixer, x = SlidingWindowAttention(cfg, 1).double(), hidden()
    batch, steps, _ = x.shape
    q, k, v = (p(x).view(batch, steps, 2, 8).transpose(1, 2) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    position = torch.arange(steps, dtype=torch.float64)
    frequency = 1.0 / 10000.0 ** (torch.arange(0, 4, dtype=torch.float64) / 4)
    angles = torch.cat([position[:, None] * frequency] * 2, dim=-1)

    def rotate(t):
        first, second = t.chunk(2, dim=-1)
        return t * angles.cos() + torch.cat([-second, first], dim=-1) * angles.sin()

    scores = rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(8)
    distance = position[:, None] - position[None, :]
    scores = scores.masked_fill(~((distance >= 0) & (distance < 3)), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, steps, -1)
    torch.testing.assert_close(mixer(x), mixer.o_proj(y), **TOL)
    cache = DynamicCache(config=cfg)
    decoded = [mixer(x[:, :2], cache=cache)] + [mixer(x[:, t : t + 1], cache=cache) for t in range(2, steps)]
    torch.testing.assert_close(torch.cat(decoded, dim=1), mixer.o_proj(y), **TOL)


@pytest.mark.parametrize("module", ["conv", "swa"])
def test_padding_anywhere_in_a_row_is_skipped(module):
    cfg = config()
    torch.manual_seed(0)
    mixer = JRTForCausalLM(cfg).double().model.layers[2 if module == "conv" else 1].mixer  # initialised weights
    assert isinstance(mixer, BaseConv if module == "conv" else SlidingWindowAttention)
    x = hidden(batch=1, steps=8)
    holes = torch.tensor([[True, True, False, True, False, False, True, True, True, True, True]])
    spread = torch.full((1, 11, 16), float("nan"), dtype=torch.float64)
    spread[0, holes[0]] = x[0]
    torch.testing.assert_close(mixer(spread, attention_mask=holes)[0, holes[0]], mixer(x)[0], **TOL)


def test_collator_masks_the_prefix_and_builds_both_labels():
    collator = JRTDataCollator(mask_token_id=99, enc_length=4, mlm_probability=0.5, pad_token_id=0, seed=0)
    rows = [list(range(10, 20)), list(range(30, 36))]
    batch = collator([{"input_ids": r} for r in rows])
    ids, labels, targets = batch["input_ids"], batch["labels"], batch["mlm_targets"]
    assert ids.shape == labels.shape == targets.shape == (2, 10)
    assert batch["attention_mask"].tolist() == [[1] * 10, [1] * 6 + [0] * 4]
    original = torch.tensor([rows[0], rows[1] + [0] * 4])
    masked = ids == 99
    assert masked.any() and not masked[:, 4:].any()
    assert torch.equal(targets[masked], original[masked]) and (targets[~masked] == -100).all()
    assert torch.equal(ids[~masked], original[~masked])
    assert (labels[:, :5] == -100).all() and (labels[1, 6:] == -100).all()
    assert labels[0, 5:].tolist() == rows[0][5:] and labels[1, 5].item() == rows[1][5]
    with pytest.raises(ValueError, match="mask_token_id"):
        JRTDataCollator.from_config(config(mask_token_id=None))
    assert JRTDataCollator.from_config(config()).enc_length == 4


def test_loss_is_next_token_plus_weighted_masked_lm():
    cfg = config(mlm_weight=0.25)
    torch.manual_seed(0)
    model = JRTForCausalLM(cfg).double()
    collator = JRTDataCollator.from_config(cfg, seed=1)
    collator.mlm_probability = 0.5
    batch = collator([{"input_ids": list(range(1, 13))}, {"input_ids": list(range(20, 29))}])
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels, targets = batch["labels"], batch["mlm_targets"]
    ntp = F.cross_entropy(logits[:, :-1].reshape(-1, 40), labels[:, 1:].reshape(-1), ignore_index=-100)
    mlm = F.cross_entropy(logits.reshape(-1, 40), targets.reshape(-1), ignore_index=-100)
    assert (targets != -100).any()
    out = model(**batch)
    loss_tol = {"atol": 1e-6, "rtol": 1e-6}  # the losses are computed in float32, as transformers' loss is
    torch.testing.assert_close(out.loss.double(), ntp + 0.25 * mlm, **loss_tol)
    plain = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    torch.testing.assert_close(plain.loss.double(), ntp, **loss_tol)
    only_mlm = model(batch["input_ids"], attention_mask=batch["attention_mask"], mlm_targets=targets)
    torch.testing.assert_close(only_mlm.loss.double(), 0.25 * mlm, **loss_tol)
    local = int((labels[:, 1:] != -100).sum())  # gradient accumulation: this micro-batch holds half the labels
    accumulated = model(**batch, num_items_in_batch=2 * local)
    torch.testing.assert_close(accumulated.loss.double(), (ntp + 0.25 * mlm) / 2, **loss_tol)
    with pytest.raises(ValueError, match="mlm_targets must be"):
        model(batch["input_ids"], mlm_targets=targets[:, :3])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enc_length", -1),
        ("feature_dim", 0),
        ("pla_layers", [5]),
        ("swa_layers", [0]),
        ("swa_window", 0),
        ("conv_kernel_size", 0),
        ("head_dim", 3),
        ("eps", -1.0),
        ("mlm_weight", float("inf")),
        ("mlm_probability", 1.5),
        ("mask_token_id", 40),
    ],
)
def test_invalid_config_names_the_field(field, value):
    name = "head_dim|pla_layers and swa_layers" if field in ("head_dim", "swa_layers") else field
    with pytest.raises(ValueError, match=name):
        config(**{field: value})


def test_trainer_trains_on_the_jrt_objective(tmp_path):
    from transformers import Trainer, TrainingArguments

    cfg = config()
    torch.manual_seed(0)
    model = JRTForCausalLM(cfg)
    generator = torch.Generator().manual_seed(3)
    data = [{"input_ids": torch.randint(0, 39, (int(n),), generator=generator).tolist()} for n in (9, 12, 7, 10)]
    collator = JRTDataCollator.from_config(cfg, seed=0)
    collator.mlm_probability = 0.5
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        max_steps=3,
        gradient_accumulation_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, data_collator=collator, train_dataset=data, eval_dataset=data)
    assert math.isfinite(trainer.train().training_loss)
    assert math.isfinite(trainer.evaluate()["eval_loss"])


@pytest.mark.parametrize(
    ("depth", "pla", "swa"), [(1, [], []), (3, [1], [2]), (26, [1, 6, 11, 16, 21], [2, 7, 12, 17, 22])]
)
def test_default_block_pattern_repeats_the_released_one_up_to_the_depth(depth, pla, swa):
    config = AutoConfig.for_model("seqp_jrt", num_hidden_layers=depth)
    assert (config.pla_layers, config.swa_layers) == (pla, swa)
