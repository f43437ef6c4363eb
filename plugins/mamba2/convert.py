"""Checkpoint conversion between transformers' Mamba-2 (`transformers.Mamba2ForCausalLM`, e.g.
mistralai/Mamba-Codestral-7B-v0.1) and seqp_mamba2 (`Mamba2ForCausalLM`), both ways.

Both models compute the same function (`docs/architectures/mamba2.md`, section 'Mixer'): embeddings, pre-norm blocks
``x + mixer(RMSNorm(x))`` with the Mamba-2 mixer (in_proj -> [z | xBC | dt], causal depthwise conv + SiLU on xBC, SSD
with D skip, gated RMSNorm ``norm(y * silu(z))`` per group of d_inner / G channels, out_proj), a final RMSNorm and the
LM head. transformers 5.24's `MambaRMSNormGated` normalises per group too (group_size = d_inner / n_groups), like
mamba_ssm and seqp_mamba2, and it uses `layer_norm_epsilon` for the block norms, the gated norm and the final
norm alike, as seqp_mamba2 uses `norm_eps`. Parameter names and shapes are the same inside the mixer, so the
conversion only renames (D hidden size, d_inner = expand * D, H heads, G groups, N state size, K conv kernel,
conv_dim = d_inner + 2 G N; block prefixes `backbone.layers.{i}.` and `model.layers.{i}.`):

    transformers                                         seqp_mamba2
    backbone.embeddings                   [V, D]          model.embed_tokens
    norm                                  [D]             mixer_norm
    mixer.in_proj                         [2 d_inner + 2 G N + H, D] (bias with use_bias), same name
    mixer.conv1d                          [conv_dim, 1, K] (bias [conv_dim] with use_conv_bias), same name
    mixer.dt_bias, mixer.A_log, mixer.D   [H]             same names
    mixer.norm                            [d_inner]       same name (the gated RMSNorm)
    mixer.out_proj                        [D, d_inner] (bias with use_bias), same name
    backbone.norm_f                       [D]             model.norm
    lm_head                               [V, D]          lm_head

Config fields carried both ways: vocab_size, hidden_size, num_hidden_layers, state_size, head_dim, n_groups,
expand, conv_kernel, use_conv_bias, use_bias, chunk_size, time_step_min, time_step_max, time_step_floor,
time_step_limit, layer_norm_epsilon <-> norm_eps, initializer_range, tie_word_embeddings, use_cache, dtype and
the pad/bos/eos token ids; transformers' num_heads is expand * hidden_size / head_dim on both sides.

Not carried, as they do not change what a loaded checkpoint computes: transformers' `time_step_rank` (stored,
never used by its Mamba-2) and `rescale_prenorm_residual` (init only), seqp_mamba2's `A_init_range` (init only;
transformers initialises A_log = log(1..H)), `kernel_backend`, `hidden_dropout` (transformers' Mamba-2 has no
dropout) and `sc_state_norm_chunk` (only read with a state-norm threshold, which is refused on export).
Everything seqp_mamba2 has beyond plain Mamba-2 is refused on export, naming the field: the state-collapse
options (`sc_*`), a feed-forward, MaTVLM's `xb_heads` layout and hybrid `attention_layers`.

`residual_in_fp32`: transformers adds the residual stream in float32 when it is set (its default); seqp_mamba2
adds it in the model's dtype, which is transformers' `residual_in_fp32=False`. Both are accepted on import
(the same in float32; in half precision the converted model rounds the residual stream to the model dtype) and
exports say False, the setting under which transformers rounds the residual stream as seqp_mamba2 does.

`time_step_limit`: seqp_mamba2 clamps Δ to it at every token; transformers' one-token decoding step
(`mamba2_selective_state_update`) does not clamp, only its chunked path does, so with a limit other than
(0, inf) transformers' own generation differs from its full forward and from seqp_mamba2's generation.
"""

from __future__ import annotations

import os

import torch
from transformers import Mamba2Config as HFMamba2Config
from transformers import Mamba2ForCausalLM as HFMamba2ForCausalLM

from hf_seqplugins import build_with_weights, load_complete, refuse

from .configuration import Mamba2Config
from .modeling import Mamba2ForCausalLM

__all__ = [
    "config_from_transformers",
    "config_to_transformers",
    "from_transformers",
    "state_dict_from_transformers",
    "state_dict_to_transformers",
    "to_transformers",
]

# (transformers parameter, seqp_mamba2 parameter), relative to a block; biases only exist with use_bias /
# use_conv_bias.
_BLOCK_PARAMS = (
    ("norm.weight", "mixer_norm.weight"),
    *(
        (f"mixer.{name}", f"mixer.{name}")
        for name in (
            "in_proj.weight",
            "in_proj.bias",
            "conv1d.weight",
            "conv1d.bias",
            "dt_bias",
            "A_log",
            "D",
            "norm.weight",
            "out_proj.weight",
            "out_proj.bias",
        )
    ),
)
_TOP_PARAMS = (
    ("backbone.embeddings.weight", "model.embed_tokens.weight"),
    ("backbone.norm_f.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
)
# seqp_mamba2 fields that transformers' Mamba-2 cannot express unless they hold the plain Mamba-2 value:
# (field, is the value plain, why). Stuffed Mamba's state-collapse options, a feed-forward, MaTVLM's x/B layout,
# hybrid attention blocks, and the logit soft cap that `SeqForCausalLM` applies when a config carries one (not a
# Mamba2Config field: only checked where present).
_PLAIN_ONLY = (
    ("sc_decay_scale", lambda v: v == 1, "Stuffed Mamba's decay scale λ_α, which transformers' Mamba-2 lacks"),
    ("sc_input_scale", lambda v: v == 1, "Stuffed Mamba's input scale λ_B, which transformers' Mamba-2 lacks"),
    ("sc_dt_scale", lambda v: v == 1, "a Δ scale, which transformers' Mamba-2 lacks"),
    ("sc_state_norm_threshold", lambda v: v is None, "state normalisation, which transformers' Mamba-2 lacks"),
    ("sc_sliding_window", lambda v: v is None, "a state-level sliding window, which transformers' Mamba-2 lacks"),
    ("intermediate_size", lambda v: v == 0, "transformers' Mamba-2 blocks have no feed-forward"),
    ("xb_heads", lambda v: v is None, "transformers' Mamba-2 has only the standard [z | x B C | dt] layout"),
    ("attention_layers", lambda v: not v, "transformers' Mamba-2 has no attention blocks"),
    ("output_logit_soft_cap", lambda v: not v, "transformers' Mamba-2 does not soft-cap its logits"),
)


def config_from_transformers(hf_config: HFMamba2Config) -> Mamba2Config:
    """The `Mamba2Config` (plain Mamba-2: no feed-forward, state-collapse options off) of a transformers
    `Mamba2Config`. See the module docstring for the fields carried and those left out.

    Raises ValueError naming the field for: num_heads != expand * hidden_size / head_dim (seqp_mamba2 derives
    it), hidden_act other than "silu" (seqp_mamba2's convolution activation), and whatever `Mamba2Config`'s own
    validation refuses (e.g. num_heads not a multiple of n_groups).
    """
    if hf_config.hidden_act != "silu":
        refuse(hf_config, "hidden_act", "seqp_mamba2 applies SiLU after the convolution")
    inner = hf_config.expand * hf_config.hidden_size
    if inner % hf_config.head_dim or hf_config.num_heads != inner // hf_config.head_dim:
        refuse(
            hf_config,
            "num_heads",
            f"seqp_mamba2 has expand * hidden_size / head_dim = {inner} / {hf_config.head_dim} heads",
        )
    return Mamba2Config(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        state_size=hf_config.state_size,
        head_dim=hf_config.head_dim,
        n_groups=hf_config.n_groups,
        expand=hf_config.expand,
        conv_kernel=hf_config.conv_kernel,
        use_conv_bias=hf_config.use_conv_bias,
        use_bias=hf_config.use_bias,
        chunk_size=hf_config.chunk_size,
        time_step_min=hf_config.time_step_min,
        time_step_max=hf_config.time_step_max,
        time_step_floor=hf_config.time_step_floor,
        time_step_limit=tuple(float(limit) for limit in hf_config.time_step_limit),
        intermediate_size=0,
        norm_eps=hf_config.layer_norm_epsilon,
        initializer_range=hf_config.initializer_range,
        tie_word_embeddings=hf_config.tie_word_embeddings,
        use_cache=hf_config.use_cache,
        pad_token_id=hf_config.pad_token_id,
        bos_token_id=hf_config.bos_token_id,
        eos_token_id=hf_config.eos_token_id,
        dtype=hf_config.dtype,
    )


def config_to_transformers(config: Mamba2Config) -> HFMamba2Config:
    """The transformers `Mamba2Config` of a `Mamba2Config`, with `residual_in_fp32=False` (see the module
    docstring) and transformers' defaults for what it does not carry.

    Raises ValueError naming the field for every option transformers' Mamba-2 cannot express when it is not at
    its plain value: sc_decay_scale, sc_input_scale, sc_dt_scale (not 1), sc_state_norm_threshold,
    sc_sliding_window, xb_heads (not None), intermediate_size (not 0), attention_layers (not empty) and an
    output_logit_soft_cap attribute (set).
    """
    for field, is_plain, why in _PLAIN_ONLY:
        if hasattr(config, field) and not is_plain(getattr(config, field)):
            refuse(config, field, why)
    return HFMamba2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_heads=config.num_heads,
        head_dim=config.head_dim,
        state_size=config.state_size,
        n_groups=config.n_groups,
        expand=config.expand,
        conv_kernel=config.conv_kernel,
        use_conv_bias=bool(config.use_conv_bias),
        use_bias=bool(config.use_bias),
        chunk_size=config.chunk_size,
        time_step_min=float(config.time_step_min),
        time_step_max=float(config.time_step_max),
        time_step_floor=float(config.time_step_floor),
        time_step_limit=tuple(float(limit) for limit in config.time_step_limit),
        layer_norm_epsilon=float(config.norm_eps),
        initializer_range=float(config.initializer_range),
        hidden_act="silu",
        residual_in_fp32=False,
        tie_word_embeddings=bool(config.tie_word_embeddings),
        use_cache=bool(config.use_cache),
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        dtype=config.dtype,
    )


def _names(num_layers: int):
    """(transformers key, seqp_mamba2 key) for every parameter either model may have."""
    yield from _TOP_PARAMS
    for i in range(num_layers):
        for hf_name, our_name in _BLOCK_PARAMS:
            yield f"backbone.layers.{i}.{hf_name}", f"model.layers.{i}.{our_name}"


def _rename(state_dict: dict[str, torch.Tensor], num_layers: int, reverse: bool) -> dict[str, torch.Tensor]:
    """`state_dict` with transformers keys renamed to seqp_mamba2's (or back, `reverse`); ValueError naming the
    keys that neither layout has."""
    source, out = dict(state_dict), {}
    for hf_key, our_key in _names(num_layers):
        old, new = (our_key, hf_key) if reverse else (hf_key, our_key)
        if old in source:
            out[new] = source.pop(old)
    if source:
        side = "seqp_mamba2" if reverse else "transformers Mamba-2"
        raise ValueError(f"keys unknown to the {side} layout ({num_layers} layers): {sorted(source)}")
    return out


def state_dict_from_transformers(
    hf_state_dict: dict[str, torch.Tensor], hf_config: HFMamba2Config
) -> dict[str, torch.Tensor]:
    """seqp_mamba2 state dict (keys of `Mamba2ForCausalLM`) of a transformers `Mamba2ForCausalLM` state dict
    (shapes in the module docstring). Tensors keep dtype and device and are the input tensors themselves. A
    missing `lm_head.weight` is taken from the embeddings when `tie_word_embeddings` is set.

    Raises ValueError for what `config_from_transformers` refuses, for keys this layout does not know, and for
    tie_word_embeddings=True with an `lm_head.weight` that differs from the embeddings.
    """
    config = config_from_transformers(hf_config)
    source = dict(hf_state_dict)
    if config.tie_word_embeddings:
        embeddings = source["backbone.embeddings.weight"]
        if not torch.equal(source.setdefault("lm_head.weight", embeddings), embeddings):
            refuse(
                hf_config,
                "tie_word_embeddings",
                "lm_head.weight differs from the embeddings; set tie_word_embeddings=False to keep both",
            )
    return _rename(source, config.num_hidden_layers, reverse=False)


def state_dict_to_transformers(state_dict: dict[str, torch.Tensor], config: Mamba2Config) -> dict[str, torch.Tensor]:
    """transformers `Mamba2ForCausalLM` state dict (for `config_to_transformers(config)`) of a seqp_mamba2 state
    dict (shapes in the module docstring). A tied model's `lm_head.weight` is its embeddings. Tensors keep dtype
    and device and are the input tensors themselves.

    Raises ValueError for whatever `config_to_transformers` refuses and for keys this layout does not know.
    """
    config_to_transformers(config)
    source = dict(state_dict)
    if config.tie_word_embeddings:
        source["lm_head.weight"] = source["model.embed_tokens.weight"]
    return _rename(source, config.num_hidden_layers, reverse=True)


def from_transformers(
    model_or_path: HFMamba2ForCausalLM | str | os.PathLike, **from_pretrained_kwargs
) -> Mamba2ForCausalLM:
    """A seqp_mamba2 `Mamba2ForCausalLM` with the weights (copied), config and generation config of a transformers
    `Mamba2ForCausalLM`: an instance, or a folder / hub repo id loaded with `transformers.Mamba2ForCausalLM.
    from_pretrained(model_or_path, **from_pretrained_kwargs)` (e.g. `dtype=torch.bfloat16`). Keeps dtype, device
    and train/eval mode. The converted model runs its `kernel_backend` "auto"; set `model.config.kernel_backend`
    to pin one.

    Raises ValueError (naming the field) for what seqp_mamba2 cannot represent, see `config_from_transformers` and
    `state_dict_from_transformers`, and for a checkpoint with missing or unexpected keys.
    """
    hf_model = load_complete(HFMamba2ForCausalLM, model_or_path, **from_pretrained_kwargs)
    config = config_from_transformers(hf_model.config)
    return build_with_weights(
        Mamba2ForCausalLM, config, state_dict_from_transformers(hf_model.state_dict(), hf_model.config), like=hf_model
    )


def to_transformers(model: Mamba2ForCausalLM) -> HFMamba2ForCausalLM:
    """A transformers `Mamba2ForCausalLM` with the weights (copied), config and generation config of a seqp_mamba2
    `Mamba2ForCausalLM`. Keeps dtype, device and train/eval mode.

    Raises ValueError (naming the field) for what transformers' Mamba-2 cannot represent; see
    `config_to_transformers`.
    """
    hf_config = config_to_transformers(model.config)
    return build_with_weights(
        HFMamba2ForCausalLM, hf_config, state_dict_to_transformers(model.state_dict(), model.config), like=model
    )
