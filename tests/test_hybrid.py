"""Attention/Mamba-2 hybrids from a Llama decoder (MaTVLM init), mixed caches, and distillation with Trainer."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments
from transformers.models.llama.modeling_llama import repeat_kv

import hf_seqplugins  # noqa: F401
from hf_seqplugins.plugins.mamba2.hybrid import (
    HybridDistillationTrainer,
    distillation_loss,
    freeze_all_but_mamba,
    hybrid_from_llama,
)


def llama(kv_heads=2, tie=False, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=tie,
        rope_theta=500.0,
    )
    return LlamaForCausalLM(config).eval()


def ids(batch=2, length=12, seed=1):
    return torch.randint(0, 40, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("tie", [False, True])
@torch.no_grad()
def test_hybrid_without_mamba_layers_is_the_llama(kv_heads, tie):
    teacher = llama(kv_heads, tie)
    hybrid = hybrid_from_llama(teacher, mamba_layers=[]).eval()
    tokens = ids()
    torch.testing.assert_close(hybrid(tokens).logits, teacher(tokens).logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(
        hybrid.generate(tokens[:, :5], max_new_tokens=6, do_sample=False),
        teacher.generate(tokens[:, :5], max_new_tokens=6, do_sample=False),
    )


@torch.no_grad()
def test_mamba_layers_take_v_k_q_o_of_their_attention():
    teacher = llama(kv_heads=2)
    hybrid = hybrid_from_llama(teacher, mamba_layers=[0, 2])
    assert hybrid.config.attention_layers == [1] and hybrid.config.layer_types == [
        "linear_attention",
        "full_attention",
        "linear_attention",
    ]
    attention, mixer = teacher.model.layers[2].self_attn, hybrid.model.layers[2].mixer
    rows = mixer.in_proj.weight
    d_inner, kv_width = mixer.d_inner, 2 * 8
    assert torch.equal(rows[d_inner : d_inner + kv_width], attention.v_proj.weight)
    assert torch.equal(rows[d_inner + kv_width : d_inner + 2 * kv_width], attention.k_proj.weight)
    assert torch.equal(rows[d_inner + 2 * kv_width : d_inner + 2 * kv_width + 32], attention.q_proj.weight)
    assert torch.equal(mixer.out_proj.weight, attention.o_proj.weight)
    assert torch.equal(hybrid.model.layers[2].ffn.down_proj.weight, teacher.model.layers[2].mlp.down_proj.weight)


def test_grouped_x_and_b_are_shared_like_transformers_repeat_kv():
    hybrid = hybrid_from_llama(llama(kv_heads=2), mamba_layers=[0])
    heads = torch.randn(1, 5, 2, 8)  # [B, T, kv heads, P]
    ours = heads.repeat_interleave(hybrid.config.num_heads // hybrid.config.xb_heads, dim=2)
    torch.testing.assert_close(ours, repeat_kv(heads.transpose(1, 2), 2).transpose(1, 2))


@torch.no_grad()
def test_hybrid_generates_from_mixed_caches_and_ignores_left_padding():
    hybrid = hybrid_from_llama(llama(kv_heads=2), mamba_layers=[0, 2], kernel_backend="torch").eval()
    tokens = ids(length=10)
    generated = hybrid.generate(tokens[:, :6], max_new_tokens=5, do_sample=False)
    assert torch.equal(hybrid(generated).logits.argmax(-1)[:, 5:-1], generated[:, 6:])
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), tokens[:1, :7]], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 7)], dim=1).long()
    alone = hybrid(tokens[:1, :7]).logits
    torch.testing.assert_close(hybrid(padded, attention_mask=mask).logits[:, 3:], alone, atol=1e-5, rtol=1e-4)


def test_distillation_loss_terms():
    logits = torch.randn(2, 3, 7)
    assert distillation_loss(logits, logits).abs().item() < 1e-6
    a, b = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    assert distillation_loss(logits, logits, [(a, b)], layer_weight=2.0).item() == pytest.approx(2 * 24**0.5, rel=1e-5)


def test_distillation_with_trainer_trains_only_the_mamba_mixers(tmp_path):
    teacher = llama(kv_heads=2)
    student = hybrid_from_llama(teacher, mamba_layers=[1], kernel_backend="torch")
    trainable = freeze_all_but_mamba(student)
    assert trainable and all(name.startswith("model.layers.1.mixer.") for name in trainable)
    frozen_before = {n: p.clone() for n, p in student.named_parameters() if not p.requires_grad}
    data = [{"input_ids": row, "attention_mask": torch.ones_like(row)} for row in ids(batch=16, length=12, seed=3)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
    )
    trainer = HybridDistillationTrainer(model=student, args=args, train_dataset=data, teacher=teacher)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert all(torch.equal(p, frozen_before[n]) for n, p in student.named_parameters() if n in frozen_before)


def test_distillation_loss_leaves_padding_out():
    student, teacher = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    same_where_real = torch.where(mask[..., None].bool(), teacher, student)
    layer = torch.randn(2, 4, 3)
    moved = layer + 5 * (1 - mask[..., None])
    assert distillation_loss(same_where_real, teacher, [(moved, layer)], mask=mask).abs().item() < 1e-6
    assert distillation_loss(same_where_real, teacher, [(moved, layer)]).item() > 1.0
