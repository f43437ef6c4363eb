"""Checkpoint conversion between transformers' xLSTM (`transformers.xLSTMForCausalLM`, the NX-AI/xLSTM-7b layout)
and seqp_xlstm (`XLSTMForCausalLM`), both ways.

Both models compute the same function (`docs/architectures/xlstm.md`, section 'xLSTM-7B block'): embeddings, pre-norm
blocks of an mLSTM layer and a SwiGLU feed-forward, a final RMSNorm and a soft-capped LM head. The conversion renames
parameters, splits or concatenates transformers' fused projections (`weight_mode="fused"`) and refuses, with a
ValueError naming the field, whatever one side cannot represent.

Names (D hidden size, NH heads, D_qk = int(D * qk_dim_factor), D_v = int(D * v_dim_factor), U feed-forward width;
block prefixes `backbone.blocks.{i}.` and `model.layers.{i}.`):

    transformers                                         seqp_xlstm
    backbone.embeddings                        [V, D]    model.embed_tokens
    norm_mlstm                                 [D]       mixer_norm
    mlstm_layer.q, .k                          [D_qk, D] mixer.q_proj, .k_proj
    mlstm_layer.v, .ogate_preact               [D_v, D]  mixer.v_proj, .ogate_proj
    mlstm_layer.igate_preact, .fgate_preact    [NH, D]   mixer.igate_proj, .fgate_proj (biases [NH])
    mlstm_layer.multihead_norm                 [D_v]     mixer.multihead_norm
    mlstm_layer.out_proj                       [D, D_v]  mixer.out_proj
    norm_ffn                                   [D]       ffn_norm
    ffn.proj_up_gate, .proj_up                 [U, D]    ffn.gate_proj, .up_proj
    ffn.proj_down                              [D, U]    ffn.down_proj
    backbone.out_norm                          [D]       model.norm
    lm_head                                    [V, D]    lm_head

`weight_mode="fused"` replaces, per block, `q, k, v, ogate_preact` by `mlstm_layer.qkv_opreact`
`[2 D_qk + 2 D_v, D]` (rows in that order), `igate_preact, fgate_preact` by `mlstm_layer.ifgate_preact`
`[2 NH, D]` with bias `[2 NH]` (input gate first) and `proj_up_gate, proj_up` by `ffn.proj_up_gate_z` `[2 U, D]`.

With `use_bias=True` transformers also puts biases on the block RMSNorms, the multi-head LayerNorm and the
feed-forward, which seqp_xlstm does not have: they are written as zeros on export and must be zero on import.
transformers' xLSTMForCausalLM never ties `lm_head` to the embeddings whatever `tie_word_embeddings` says, so a
tied seqp_xlstm model is exported with a copy of its embeddings as `lm_head`.

Settings of how transformers runs its kernels (`mode`, `chunkwise_kernel`, `sequence_kernel`, `step_kernel`,
`return_last_states`, `autocast_kernel_dtype`, `inference_state_dtype`, `norm_reduction_force_float32`,
`max_inference_chunksize`) do not change what seqp_xlstm computes (it picks its kernels with `kernel_backend`
and always reduces norms and keeps half-precision states in float32): an imported model keeps them in
`config.transformers_kernel_settings`, and converting back restores them, so a round trip gives the same model
(`mode="train"` and `"inference"` are different computation paths in transformers). A model that never was
a transformers one exports with transformers' defaults (`mode="inference"`: any sequence length, generation).
seqp_xlstm's `kernel_backend`, `hidden_dropout` (transformers' xLSTM has no dropout) and `initializer_range`
are not exported.
"""

from __future__ import annotations

import os

import torch
from transformers import xLSTMConfig, xLSTMForCausalLM
from transformers.models.xlstm.configuration_xlstm import round_up_to_next_multiple_of

from hf_seqplugins import build_with_weights, load_complete, refuse

from .configuration import XLSTMConfig
from .modeling import XLSTMForCausalLM

__all__ = [
    "WEIGHT_MODES",
    "config_from_transformers",
    "config_to_transformers",
    "from_transformers",
    "state_dict_from_transformers",
    "state_dict_to_transformers",
    "to_transformers",
]

WEIGHT_MODES = ("single", "fused")

# (transformers module, seqp_xlstm module, bias only in transformers (with use_bias)), relative to a block.
_BLOCK_MODULES = (
    ("norm_mlstm", "mixer_norm", True),
    ("mlstm_layer.q", "mixer.q_proj", False),
    ("mlstm_layer.k", "mixer.k_proj", False),
    ("mlstm_layer.v", "mixer.v_proj", False),
    ("mlstm_layer.ogate_preact", "mixer.ogate_proj", False),
    ("mlstm_layer.igate_preact", "mixer.igate_proj", False),
    ("mlstm_layer.fgate_preact", "mixer.fgate_proj", False),
    ("mlstm_layer.multihead_norm", "mixer.multihead_norm", True),
    ("mlstm_layer.out_proj", "mixer.out_proj", False),
    ("norm_ffn", "ffn_norm", True),
    ("ffn.proj_up_gate", "ffn.gate_proj", True),
    ("ffn.proj_up", "ffn.up_proj", True),
    ("ffn.proj_down", "ffn.down_proj", True),
)
_TOP_MODULES = (
    ("backbone.embeddings", "model.embed_tokens", False),
    ("backbone.out_norm", "model.norm", False),
    ("lm_head", "lm_head", False),
)
# transformers' fused module -> the single-mode modules it concatenates along the output rows, in order.
_FUSED_MODULES = (
    ("mlstm_layer.qkv_opreact", ("mlstm_layer.q", "mlstm_layer.k", "mlstm_layer.v", "mlstm_layer.ogate_preact")),
    ("mlstm_layer.ifgate_preact", ("mlstm_layer.igate_preact", "mlstm_layer.fgate_preact")),
    ("ffn.proj_up_gate_z", ("ffn.proj_up_gate", "ffn.proj_up")),
)


def _up_proj_dim(hf_config: xLSTMConfig) -> int:
    """transformers' feed-forward width: D * ffn_proj_factor rounded up to the multiple (its own rounding)."""
    return round_up_to_next_multiple_of(
        hf_config.hidden_size * hf_config.ffn_proj_factor, hf_config.ffn_round_up_to_multiple_of
    )


KERNEL_SETTINGS = (
    "mode",
    "chunkwise_kernel",
    "sequence_kernel",
    "step_kernel",
    "return_last_states",
    "autocast_kernel_dtype",
    "inference_state_dtype",
    "norm_reduction_force_float32",
    "max_inference_chunksize",
)


def config_from_transformers(hf_config: xLSTMConfig) -> XLSTMConfig:
    """The `XLSTMConfig` of a transformers `xLSTMConfig`.

    Maps hidden_size (= embedding_dim), num_hidden_layers (= num_blocks), num_heads, vocab_size, qk_dim_factor,
    v_dim_factor, gate_soft_cap, output_logit_soft_cap, norm_eps, use_bias, ffn_proj_factor and
    ffn_round_up_to_multiple_of (intermediate_size is set to transformers' rounded width), eps -> mlstm_eps,
    chunk_size, tie_word_embeddings, use_cache, dtype and the pad/bos/eos token ids.

    Raises ValueError naming the field for: embedding_dim != hidden_size or num_blocks != num_hidden_layers (the
    two are one size in seqp_xlstm), add_out_norm=False (seqp_xlstm always has the final norm), a gate or logit
    soft cap <= 0 (transformers divides by it; seqp_xlstm reads 0 as "no cap"), an unknown weight_mode.
    """
    if hf_config.embedding_dim != hf_config.hidden_size:
        refuse(hf_config, "embedding_dim", f"it must equal hidden_size ({hf_config.hidden_size})")
    if hf_config.num_blocks != hf_config.num_hidden_layers:
        refuse(hf_config, "num_blocks", f"it must equal num_hidden_layers ({hf_config.num_hidden_layers})")
    if not hf_config.add_out_norm:
        refuse(hf_config, "add_out_norm", "seqp_xlstm always applies the final RMSNorm")
    for field in ("gate_soft_cap", "output_logit_soft_cap"):
        if not getattr(hf_config, field) > 0:
            refuse(hf_config, field, "transformers divides by the cap; only caps > 0 have a seqp_xlstm equivalent")
    if hf_config.weight_mode not in WEIGHT_MODES:
        refuse(hf_config, "weight_mode", f"expected one of {WEIGHT_MODES}")
    return XLSTMConfig(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        num_hidden_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_heads,
        qk_dim_factor=hf_config.qk_dim_factor,
        v_dim_factor=hf_config.v_dim_factor,
        gate_soft_cap=hf_config.gate_soft_cap,
        output_logit_soft_cap=hf_config.output_logit_soft_cap,
        input_gate="exp",
        mlstm_eps=hf_config.eps,
        chunk_size=hf_config.chunk_size,
        use_bias=hf_config.use_bias,
        block_pattern="m",
        ffn_proj_factor=hf_config.ffn_proj_factor,
        ffn_round_up_to_multiple_of=hf_config.ffn_round_up_to_multiple_of,
        intermediate_size=_up_proj_dim(hf_config),
        norm_eps=hf_config.norm_eps,
        tie_word_embeddings=hf_config.tie_word_embeddings,
        use_cache=hf_config.use_cache,
        pad_token_id=hf_config.pad_token_id,
        bos_token_id=hf_config.bos_token_id,
        eos_token_id=hf_config.eos_token_id,
        dtype=hf_config.dtype,
        transformers_kernel_settings={
            field: getattr(hf_config, field) for field in KERNEL_SETTINGS if hasattr(hf_config, field)
        },
    )


def _ffn_factor_and_multiple(config: XLSTMConfig) -> tuple[float, int]:
    """`(ffn_proj_factor, ffn_round_up_to_multiple_of)` for which transformers' rounding gives intermediate_size:
    the config's own pair if it does, else intermediate_size / hidden_size with the config's multiple or with
    intermediate_size itself as the multiple."""
    size, hidden = config.intermediate_size, config.hidden_size
    if size > 0:
        for factor, multiple in (
            (config.ffn_proj_factor, config.ffn_round_up_to_multiple_of),
            (size / hidden, config.ffn_round_up_to_multiple_of),
            (size / hidden, size),
        ):
            if round_up_to_next_multiple_of(hidden * factor, multiple) == size:
                return float(factor), int(multiple)
    refuse(
        config,
        "intermediate_size",
        "transformers' xLSTM needs a feed-forward whose width it derives from "
        "round_up(hidden_size * ffn_proj_factor, ffn_round_up_to_multiple_of)",
    )


def config_to_transformers(config: XLSTMConfig, weight_mode: str = "single") -> xLSTMConfig:
    """The transformers `xLSTMConfig` of an `XLSTMConfig`, with `weight_mode` "single" or "fused" and transformers'
    default kernel settings (`mode="inference"`, native PyTorch kernels: run anywhere, any length).

    Raises ValueError naming the field for: sLSTM blocks in block_pattern, input_gate "sigmoid", a gate or logit
    soft cap of 0/None (transformers has no "no cap"), query/key or value widths (hidden_size * qk_dim_factor,
    hidden_size * v_dim_factor) that are not multiples of 64 (transformers' cache rounds them up to one and then
    crashes), an intermediate_size that transformers cannot derive from hidden_size (0 included), an unknown
    weight_mode.
    """
    if "s" in config.block_types:
        refuse(config, "block_pattern", "transformers' xLSTM has mLSTM blocks only")
    if config.input_gate != "exp":
        refuse(config, "input_gate", "transformers' xLSTM has the exponential input gate only")
    for field in ("gate_soft_cap", "output_logit_soft_cap"):
        if not getattr(config, field):
            refuse(config, field, "transformers' xLSTM always soft-caps (a float cap > 0)")
    if weight_mode not in WEIGHT_MODES:
        raise ValueError(f"weight_mode must be one of {WEIGHT_MODES}, got {weight_mode!r}")
    for field in ("qk_dim_factor", "v_dim_factor"):
        width = config.hidden_size * getattr(config, field)
        if width % 64:
            refuse(
                config,
                field,
                f"transformers' xLSTM sizes its generation cache for hidden_size * {field} rounded up "
                f"to a multiple of 64 while its layers use {width:g} itself, so its default forward and generate() "
                "crash; convert models whose query/key and value widths are multiples of 64",
            )
    ffn_proj_factor, ffn_multiple = _ffn_factor_and_multiple(config)
    return xLSTMConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        embedding_dim=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_blocks=config.num_hidden_layers,
        num_heads=config.num_heads,
        use_bias=bool(config.use_bias),
        tie_word_embeddings=bool(config.tie_word_embeddings),
        norm_eps=float(config.norm_eps),
        qk_dim_factor=float(config.qk_dim_factor),
        v_dim_factor=float(config.v_dim_factor),
        chunk_size=int(config.chunk_size),
        eps=float(config.mlstm_eps),
        ffn_proj_factor=ffn_proj_factor,
        ffn_round_up_to_multiple_of=ffn_multiple,
        gate_soft_cap=float(config.gate_soft_cap),
        output_logit_soft_cap=float(config.output_logit_soft_cap),
        weight_mode=weight_mode,
        use_cache=bool(config.use_cache),
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        dtype=config.dtype,
        **getattr(config, "transformers_kernel_settings", {}),
    )


def _modules(num_blocks: int):
    """(transformers module, seqp_xlstm module, bias only in transformers) for the whole model."""
    yield from _TOP_MODULES
    for i in range(num_blocks):
        for hf_name, our_name, hf_only_bias in _BLOCK_MODULES:
            yield f"backbone.blocks.{i}.{hf_name}", f"model.layers.{i}.{our_name}", hf_only_bias


def _fused_row_sizes(hf_config: xLSTMConfig) -> dict[str, list[int]]:
    """Row counts of the single-mode pieces of each fused module, in concatenation order."""
    qk_dim = int(hf_config.hidden_size * hf_config.qk_dim_factor)
    v_dim = int(hf_config.hidden_size * hf_config.v_dim_factor)
    up = _up_proj_dim(hf_config)
    return {
        "mlstm_layer.qkv_opreact": [qk_dim, qk_dim, v_dim, v_dim],
        "mlstm_layer.ifgate_preact": [hf_config.num_heads, hf_config.num_heads],
        "ffn.proj_up_gate_z": [up, up],
    }


def _unfuse(state_dict: dict[str, torch.Tensor], hf_config: xLSTMConfig) -> dict[str, torch.Tensor]:
    """A fused-mode transformers state dict with the fused weights/biases split into single-mode keys (views)."""
    sizes = _fused_row_sizes(hf_config)
    out = dict(state_dict)
    for i in range(hf_config.num_hidden_layers):
        for fused, parts in _FUSED_MODULES:
            for param in ("weight", "bias"):
                key = f"backbone.blocks.{i}.{fused}.{param}"
                if key not in out:
                    continue
                tensor = out.pop(key)
                if tensor.shape[0] != sum(sizes[fused]):
                    raise ValueError(
                        f"{key} has {tensor.shape[0]} rows, the config implies {sizes[fused]} (sum {sum(sizes[fused])})"
                    )
                for part, piece in zip(parts, tensor.split(sizes[fused])):
                    out[f"backbone.blocks.{i}.{part}.{param}"] = piece
    return out


def _fuse(state_dict: dict[str, torch.Tensor], hf_config: xLSTMConfig) -> dict[str, torch.Tensor]:
    """A single-mode transformers state dict with each block's fusable weights/biases concatenated."""
    out = dict(state_dict)
    for i in range(hf_config.num_hidden_layers):
        for fused, parts in _FUSED_MODULES:
            for param in ("weight", "bias"):
                keys = [f"backbone.blocks.{i}.{part}.{param}" for part in parts]
                if keys[0] in out:
                    out[f"backbone.blocks.{i}.{fused}.{param}"] = torch.cat([out.pop(key) for key in keys])
    return out


def state_dict_from_transformers(
    hf_state_dict: dict[str, torch.Tensor], hf_config: xLSTMConfig
) -> dict[str, torch.Tensor]:
    """seqp_xlstm state dict (keys of `XLSTMForCausalLM`) of a transformers `xLSTMForCausalLM` state dict.

    Fused weights are split per `hf_config.weight_mode` (see the module docstring for the shapes). Tensors keep
    dtype and device and may be views of the input. A missing `lm_head.weight` is taken from the embeddings when
    `tie_word_embeddings` is set.

    Raises ValueError for keys this layout does not know, for a non-zero bias that seqp_xlstm lacks (field
    use_bias: block norms, multi-head LayerNorm, feed-forward), and for tie_word_embeddings=True with an
    `lm_head.weight` that differs from the embeddings (transformers never ties them; seqp_xlstm would).
    """
    config = config_from_transformers(hf_config)
    source = _unfuse(hf_state_dict, hf_config) if hf_config.weight_mode == "fused" else dict(hf_state_dict)
    embeddings = source["backbone.embeddings.weight"]
    if config.tie_word_embeddings:
        lm_head = source.setdefault("lm_head.weight", embeddings)
        if not torch.equal(lm_head, embeddings):
            refuse(
                hf_config,
                "tie_word_embeddings",
                "lm_head.weight differs from the embeddings (transformers' xLSTM "
                "never ties them, seqp_xlstm would); set tie_word_embeddings=False to keep both",
            )
    ours = {}
    for hf_name, our_name, hf_only_bias in _modules(config.num_hidden_layers):
        for param in ("weight", "bias"):
            key = f"{hf_name}.{param}"
            if key not in source:
                continue
            tensor = source.pop(key)
            if param == "bias" and hf_only_bias:
                if torch.count_nonzero(tensor):
                    refuse(hf_config, "use_bias", f"{key} is non-zero and seqp_xlstm has no bias there")
                continue
            ours[f"{our_name}.{param}"] = tensor
    if source:
        raise ValueError(
            f"keys unknown to the transformers xLSTM layout ({hf_config.weight_mode} mode): {sorted(source)}"
        )
    return ours


def state_dict_to_transformers(
    state_dict: dict[str, torch.Tensor], config: XLSTMConfig, weight_mode: str = "single"
) -> dict[str, torch.Tensor]:
    """transformers `xLSTMForCausalLM` state dict (for `config_to_transformers(config, weight_mode)`) of a
    seqp_xlstm state dict.

    `weight_mode="fused"` concatenates q/k/v/output gate, input/forget gate and gate/up projections (see the module
    docstring for the shapes). With `use_bias=True` the biases that only transformers has are zeros. A tied model's
    `lm_head.weight` is its embeddings. Tensors keep dtype and device and may be the input tensors themselves.

    Raises ValueError for whatever `config_to_transformers` refuses and for keys this layout does not know.
    """
    hf_config = config_to_transformers(config, weight_mode=weight_mode)
    source = dict(state_dict)
    if config.tie_word_embeddings:
        source["lm_head.weight"] = source["model.embed_tokens.weight"]
    hf = {}
    for hf_name, our_name, hf_only_bias in _modules(config.num_hidden_layers):
        for param in ("weight", "bias"):
            key = f"{our_name}.{param}"
            if key in source:
                hf[f"{hf_name}.{param}"] = source.pop(key)
        if hf_only_bias and config.use_bias:
            weight = hf[f"{hf_name}.weight"]
            hf[f"{hf_name}.bias"] = weight.new_zeros(weight.shape[0])
    if source:
        raise ValueError(f"keys unknown to the seqp_xlstm layout (mLSTM blocks only): {sorted(source)}")
    return _fuse(hf, hf_config) if weight_mode == "fused" else hf


class _NoInitxLSTMForCausalLM(xLSTMForCausalLM):
    """transformers' `xLSTMForCausalLM` without random init, to load complete checkpoints: its `_init_weights` fails
    on every fused-mode model (it slices the `[2 NH]` gate bias with `[2 NH]`-long tensors), and a conversion has no
    use for random weights (`from_transformers` refuses checkpoints with missing keys)."""

    def _init_weights(self, module: torch.nn.Module) -> None:
        pass


def from_transformers(
    model_or_path: xLSTMForCausalLM | str | os.PathLike, **from_pretrained_kwargs
) -> XLSTMForCausalLM:
    """An `XLSTMForCausalLM` with the weights (copied), config and generation config of a transformers
    `xLSTMForCausalLM`: an instance, or a folder / hub repo id loaded with `xLSTMForCausalLM.from_pretrained(
    model_or_path, **from_pretrained_kwargs)` (e.g. `dtype=torch.bfloat16`; fused-mode checkpoints too, which
    transformers' own init cannot build). Keeps dtype, device and train/eval mode.

    Raises ValueError (naming the field) for what seqp_xlstm cannot represent, see `config_from_transformers` and
    `state_dict_from_transformers`, and for a checkpoint with missing or unexpected keys.
    """
    hf_model = load_complete(
        xLSTMForCausalLM, model_or_path, loader_class=_NoInitxLSTMForCausalLM, **from_pretrained_kwargs
    )
    config = config_from_transformers(hf_model.config)
    return build_with_weights(
        XLSTMForCausalLM, config, state_dict_from_transformers(hf_model.state_dict(), hf_model.config), like=hf_model
    )


def to_transformers(model: XLSTMForCausalLM, weight_mode: str = "single") -> xLSTMForCausalLM:
    """A transformers `xLSTMForCausalLM` (`weight_mode` "single" or "fused") with the weights (copied), config and
    generation config of an `XLSTMForCausalLM`. Keeps dtype, device and train/eval mode.

    Raises ValueError (naming the field) for what transformers' xLSTM cannot represent; see `config_to_transformers`.
    """
    hf_config = config_to_transformers(model.config, weight_mode=weight_mode)
    return build_with_weights(
        xLSTMForCausalLM,
        hf_config,
        state_dict_to_transformers(model.state_dict(), model.config, weight_mode),
        like=model,
    )
