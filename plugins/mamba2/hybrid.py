"""Attention/Mamba-2 hybrids from a transformers Llama decoder, initialised and distilled as MaTVLM does
(`docs/architectures/mamba2.md`, section 'Hybrids and MaTVLM distillation').

`hybrid_from_llama(llama, mamba_layers)` copies a `LlamaForCausalLM` into a `seqp_mamba2` model whose blocks
keep the Llama attention except at `mamba_layers`, which become attention-shaped Mamba-2 mixers (one SSM head
per attention head, state size = head size, x and B per key/value head) initialised from that layer's
attention: x rows of in_proj <- W_V, B rows <- W_K, C rows <- W_Q, out_proj <- W_O; z, dt, the convolution,
A, D and the gated norm keep the Mamba-2 init. Norms, feed-forwards, embeddings and the LM head are copied.

`HybridDistillationTrainer` trains it against the teacher with `Trainer`: temperature-scaled logit KL plus a
teacher-forced per-layer term (each Mamba-2 block applied to the teacher's input of that block, compared with
the teacher's output by an unsquared L2 norm), optionally plus cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, Trainer

from .configuration import Mamba2Config
from .modeling import Mamba2ForCausalLM


def hybrid_config_from_llama(llama_config, mamba_layers: list[int], **overrides) -> Mamba2Config:
    """A `Mamba2Config` with Llama's sizes, attention at every block not in `mamba_layers`."""
    heads, kv_heads = llama_config.num_attention_heads, llama_config.num_key_value_heads
    head_dim = getattr(llama_config, "head_dim", None) or llama_config.hidden_size // heads
    if (heads * head_dim) % llama_config.hidden_size:
        raise ValueError(
            f"num_attention_heads * head_dim ({heads * head_dim}) must be a multiple of "
            f"hidden_size ({llama_config.hidden_size})"
        )
    if getattr(llama_config, "mlp_bias", False):
        raise ValueError("mlp_bias=True: the hybrid's feed-forward has no biases")
    if llama_config.hidden_act != "silu":
        raise ValueError(f"hidden_act={llama_config.hidden_act!r}: the hybrid's feed-forward is SwiGLU (silu)")
    rope = getattr(llama_config, "rope_parameters", None) or {
        "rope_type": "default",
        "rope_theta": getattr(llama_config, "rope_theta", 10000.0),
    }
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"rope_parameters: only the default rotary embedding is supported, got {rope.get('rope_type')!r}"
        )
    layers = llama_config.num_hidden_layers
    if any(not 0 <= i < layers for i in mamba_layers):
        raise ValueError(f"mamba_layers must be block indices in [0, {layers}), got {list(mamba_layers)}")
    settings = dict(
        vocab_size=llama_config.vocab_size,
        hidden_size=llama_config.hidden_size,
        num_hidden_layers=layers,
        intermediate_size=llama_config.intermediate_size,
        norm_eps=llama_config.rms_norm_eps,
        tie_word_embeddings=llama_config.tie_word_embeddings,
        attention_layers=[i for i in range(layers) if i not in mamba_layers],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        attention_head_dim=head_dim,
        rope_theta=rope["rope_theta"],
        attention_bias=llama_config.attention_bias,
        expand=heads * head_dim // llama_config.hidden_size,
        head_dim=head_dim,
        state_size=head_dim,
        n_groups=heads,
        xb_heads=kv_heads if kv_heads != heads else None,
        use_bias=llama_config.attention_bias,
        pad_token_id=llama_config.pad_token_id,
        bos_token_id=llama_config.bos_token_id,
        eos_token_id=llama_config.eos_token_id,
    )
    return Mamba2Config(**{**settings, **overrides})


@torch.no_grad()
def hybrid_from_llama(llama: LlamaForCausalLM, mamba_layers: list[int], **config_overrides) -> Mamba2ForCausalLM:
    """The hybrid of `llama` with Mamba-2 at `mamba_layers`, initialised from their attention (see module docstring)."""
    config = hybrid_config_from_llama(llama.config, mamba_layers, **config_overrides)
    hybrid = Mamba2ForCausalLM(config).to(dtype=llama.dtype, device=llama.device)
    source, target = llama.model, hybrid.model
    target.embed_tokens.weight.copy_(source.embed_tokens.weight)
    target.norm.weight.copy_(source.norm.weight)
    if not config.tie_word_embeddings:
        hybrid.lm_head.weight.copy_(llama.lm_head.weight)
    for index, (theirs, ours) in enumerate(zip(source.layers, target.layers)):
        ours.mixer_norm.weight.copy_(theirs.input_layernorm.weight)
        ours.ffn_norm.weight.copy_(theirs.post_attention_layernorm.weight)
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(ours.ffn, name).weight.copy_(getattr(theirs.mlp, name).weight)
        attention = theirs.self_attn
        if index in config.attention_layers:
            ours.mixer.load_state_dict(attention.state_dict())
        else:
            init_mamba_from_attention(ours.mixer, attention)
    return hybrid


def init_mamba_from_attention(mixer, attention) -> None:
    """MaTVLM: in_proj's x, B and C rows <- W_V, W_K, W_Q (biases too), out_proj <- W_O."""
    x_width, b_width = mixer.config.xb_dims
    start = mixer.d_inner  # rows of z come first
    for projection, width in (
        (attention.v_proj, x_width),
        (attention.k_proj, b_width),
        (attention.q_proj, mixer.n_groups * mixer.state_size),
    ):
        if projection.weight.shape[0] != width:
            raise ValueError(
                f"attention projection of {projection.weight.shape[0]} rows does not fit a Mamba-2 slot of {width}"
            )
        mixer.in_proj.weight[start : start + width].copy_(projection.weight)
        if projection.bias is not None:
            mixer.in_proj.bias[start : start + width].copy_(projection.bias)
        start += width
    mixer.out_proj.weight.copy_(attention.o_proj.weight)
    if attention.o_proj.bias is not None:
        mixer.out_proj.bias.copy_(attention.o_proj.bias)


def freeze_all_but_mamba(model: Mamba2ForCausalLM) -> list[str]:
    """MaTVLM trains only the new Mamba-2 mixers: freeze everything else; returns the trainable parameter names."""
    trainable = {
        f"model.layers.{i}.mixer."
        for i in range(model.config.num_hidden_layers)
        if i not in model.config.attention_layers
    }
    names = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(name.startswith(prefix) for prefix in trainable))
        if parameter.requires_grad:
            names.append(name)
    return names


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    layer_pairs: list[tuple[torch.Tensor, torch.Tensor]] = (),
    temperature: float = 1.0,
    kl_weight: float = 1.0,
    layer_weight: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``kl_weight * T^2 KL(softmax(teacher / T) || softmax(student / T))`` (summed over positions and vocabulary,
    divided by the batch size) ``+ layer_weight * sum ||student_l - teacher_l||_2`` over `layer_pairs` (unsquared norm
    of the whole tensor, as MaTVLM). Logits `[B, T, V]`; layer outputs `[B, T, D]`; `mask` `[B, T]` (0 = padding,
    left out of both terms)."""
    keep = torch.ones(student_logits.shape[:2], device=student_logits.device) if mask is None else mask.float()
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)
    per_position = F.kl_div(log_student, teacher, reduction="none").sum(-1)
    loss = kl_weight * temperature**2 * (per_position * keep).sum() / student_logits.shape[0]
    for student_layer, teacher_layer in layer_pairs:
        loss = loss + layer_weight * torch.linalg.vector_norm((student_layer - teacher_layer).float() * keep[..., None])
    return loss


class HybridDistillationTrainer(Trainer):
    """`Trainer` whose loss distils `teacher` (a frozen transformers causal LM) into the hybrid `model`:
    `distillation_loss` over the logits and, teacher-forced, over every Mamba-2 block, plus
    `ce_weight` x the language-modelling loss when labels are given."""

    def __init__(
        self,
        *args,
        teacher,
        temperature: float = 1.0,
        kl_weight: float = 1.0,
        layer_weight: float = 1.0,
        ce_weight: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)
        self.temperature, self.kl_weight, self.layer_weight, self.ce_weight = (
            temperature,
            kl_weight,
            layer_weight,
            ce_weight,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels", None)
        mask = inputs.get("attention_mask")
        mamba_layers = [i for i in range(model.config.num_hidden_layers) if i not in model.config.attention_layers]
        captured = {}
        hooks = [
            self.teacher.model.layers[i].register_forward_hook(
                lambda module, args, output, i=i: captured.__setitem__(
                    i, (args[0], output[0] if isinstance(output, tuple) else output)
                )
            )
            for i in mamba_layers
        ]
        try:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
        finally:
            for hook in hooks:
                hook.remove()
        outputs = model(**inputs, labels=labels if self.ce_weight else None, use_cache=False)
        chunk_mask = None if mask is None or bool(mask.all()) else mask.bool()
        pairs = [
            (model.model.layers[i](captured[i][0], attention_mask=chunk_mask, history_mask=chunk_mask), captured[i][1])
            for i in mamba_layers
        ]
        loss = distillation_loss(
            outputs.logits, teacher_logits, pairs, self.temperature, self.kl_weight, self.layer_weight, mask
        )
        if self.ce_weight and labels is not None:
            loss = loss + self.ce_weight * outputs.loss
        return (loss, outputs) if return_outputs else loss
