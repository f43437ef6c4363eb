"""Mamba-2 model classes: the SSD mixer (`docs/architectures/mamba2.md`, section 'Mixer') in the shared pre-norm
blocks."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache
from transformers import initialization as init

from hf_seqplugins import (
    CausalSelfAttention,
    SeqForCausalLM,
    SeqForSequenceClassification,
    SeqModel,
    compute_dtype,
    read_state,
    run_by_segments,
    write_state,
)
from hf_seqplugins.kernels.ssd import ssd
from hf_seqplugins.kernels.ssd.reference import step

from .configuration import Mamba2Config


class GatedRMSNorm(nn.Module):
    """``y * silu(z)``, then RMS-normalised per group of channels and scaled (mamba_ssm's norm_before_gate=False)."""

    def __init__(self, size: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y, z `[B, T, d_inner]` -> `[B, T, d_inner]` (computed in at least float32, returned in y's dtype)."""
        dtype = compute_dtype(y.dtype)
        gated = y.to(dtype) * F.silu(z.to(dtype))
        groups = gated.unflatten(-1, (-1, self.group_size))
        normed = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.flatten(-2).to(y.dtype)


STATE_NORM_DECODING_WARNING = (
    "sc_state_norm_threshold: decoding clamps the state after every token, a forward pass after every "
    "sc_state_norm_chunk={chunk} real tokens, so scores from a forward pass differ from what generate() computes; "
    "set sc_state_norm_chunk=1 for identical ones (a slower prefill)"
)


class Mamba2Mixer(nn.Module):
    """in_proj -> [z | xBC | dt]; causal depthwise conv + SiLU on xBC; SSD over (x, Δ, A, B, C) plus D x;
    gated RMSNorm with z; out_proj.

    Parameters: `in_proj` `[D -> 2 d_inner + 2 G N + H]`, `conv1d` (depthwise, `[conv_dim, 1, K]`), `dt_bias`,
    `A_log`, `D` `[H]`, `norm.weight` `[d_inner]`, `out_proj` `[d_inner -> D]`. The cache holds the last K
    pre-convolution xBC inputs (conv state) and the SSM state `[B, H, P, N]`.
    """

    def __init__(self, config: Mamba2Config, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim, self.state_size, self.n_groups = (
            config.num_heads,
            config.head_dim,
            config.state_size,
            config.n_groups,
        )
        self.d_inner, self.conv_dim, self.conv_kernel = config.d_inner, config.conv_dim, config.conv_kernel
        self.in_proj = nn.Linear(
            config.hidden_size, self.d_inner + self.conv_dim + self.num_heads, bias=config.use_bias
        )
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, self.conv_kernel, groups=self.conv_dim, bias=config.use_conv_bias
        )
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.num_heads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // self.n_groups, config.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, config.hidden_size, bias=config.use_bias)

    @property
    def state_norm_threshold(self) -> float | list[float] | None:
        """This layer's τ (read from the config at every call: the sc_ options can be changed on a loaded model)."""
        threshold = self.config.sc_state_norm_threshold
        return threshold[self.layer_idx] if isinstance(threshold, (list, tuple)) else threshold

    def state_shapes(self) -> list[tuple[int, ...]] | None:
        """Per-row shapes of the cached state tuple: `(h,)` (None: one shape), `(h, real-token count)` with state
        normalisation, `(older, newer, count)` with the sliding window."""
        heads_state = (self.num_heads, self.head_dim, self.state_size)
        if self.config.sc_sliding_window is not None:
            return [heads_state, heads_state, ()]
        return None if self.state_norm_threshold is None else [heads_state, ()]

    def cached_ssm_state(self, cache: Cache) -> torch.Tensor | None:
        """The SSM state `[B, H, P, N]` the next token's output reads (with the sliding window, the older one)."""
        state = read_state(cache, self.layer_idx, self.state_shapes())
        return None if state is None else state[0]

    def init_mixer_weights(self) -> None:
        """mamba_ssm's init (`docs/architectures/mamba2.md`, section 'Initialisation'): softplus(dt_bias) log-uniform in
        [time_step_min, time_step_max] (>= floor), A = -U[A_init_range], D = 1; in_proj and conv1d keep PyTorch's
        default init (uniform, bound 1/sqrt(fan_in)) rather than the generic N(0, initializer_range), which would make
        x, B and C ~25x too small for the state to matter; out_proj the same, over sqrt(num_hidden_layers); Linear
        biases 0."""
        config = self.config
        low, high = math.log(config.time_step_min), math.log(config.time_step_max)
        dt = torch.exp(torch.rand(self.num_heads) * (high - low) + low).clamp(min=config.time_step_floor)
        init.copy_(self.dt_bias, dt + torch.log(-torch.expm1(-dt)))
        init.copy_(self.A_log, torch.empty(self.num_heads).uniform_(*config.A_init_range).log())
        init.ones_(self.D)
        for module, fan_in, scale in (
            (self.in_proj, config.hidden_size, 1),
            (self.conv1d, self.conv_kernel, 1),
            (self.out_proj, self.d_inner, config.num_hidden_layers),
        ):
            bound = 1 / math.sqrt(fan_in * scale)
            init.uniform_(module.weight, -bound, bound)
        if self.conv1d.bias is not None:
            init.uniform_(self.conv1d.bias, -1 / math.sqrt(self.conv_kernel), 1 / math.sqrt(self.conv_kernel))

    def causal_conv(self, xbc: torch.Tensor, cache: Cache | None, resets: torch.Tensor | None = None) -> torch.Tensor:
        """xBC `[B, T, conv_dim]` -> SiLU(causal depthwise conv) `[B, T, conv_dim]`, continuing the cached inputs.

        With `resets` `[B, T]` (packed sequences) a token's window stops at the start of its sequence, and the
        inputs cached for the next call are those of each row's last sequence only."""
        steps, kernel = xbc.shape[1], self.conv_kernel
        inputs = xbc.transpose(1, 2)
        if cache is not None:
            inputs = cache.update_conv_state(inputs, self.layer_idx, conv_kernel_size=kernel)
        inputs = inputs[..., -(steps + kernel - 1) :]
        inputs = F.pad(inputs, (steps + kernel - 1 - inputs.shape[-1], 0))
        if resets is None:
            return F.silu(F.conv1d(inputs, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)).transpose(1, 2)
        position = torch.arange(steps, device=xbc.device)
        # where each token's sequence starts; -kernel for a row's first sequence, which continues the cached inputs
        start = torch.where(resets, position, -kernel).cummax(dim=1).values
        lag = torch.arange(kernel - 1, -1, -1, device=xbc.device)
        inside = (position[:, None] - lag >= start[..., None])[:, None]  # [B, 1, T, K]
        windows = torch.where(inside, inputs.unfold(-1, kernel, 1), 0)  # [B, conv_dim, T, K]
        out = (windows * self.conv1d.weight[:, 0, None, :]).sum(-1)
        if self.conv1d.bias is not None:
            out = out + self.conv1d.bias[:, None]
        if cache is not None:
            stored = cache.layers[self.layer_idx].conv_states[0]
            times = torch.arange(steps - stored.shape[-1], steps, device=xbc.device)
            stored.copy_(torch.where((times >= start[:, -1:])[:, None], stored, 0))
        return F.silu(out).transpose(1, 2)

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]`, attention_mask and resets `[B, T]` bool or None -> `[B, T, D]`.

        Padding leaves the SSM state untouched and is never read (the convolution sees zeros there, which equals
        its zero initial state for left padding, what generation sends); `resets` start a new sequence in both
        the convolution and the SSM state."""
        config = self.config
        config.check_state_collapse_options(self.layer_idx)
        z, xbc, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.num_heads], dim=-1)
        if attention_mask is not None:
            xbc = torch.where(attention_mask[..., None], xbc, 0)
        xbc = self.causal_conv(xbc, cache, resets)
        x, B, C = xbc.split([*config.xb_dims, self.n_groups * self.state_size], dim=-1)
        x, B = x.unflatten(-1, (-1, self.head_dim)), B.unflatten(-1, (-1, self.state_size))
        if config.xb_heads is not None:  # MaTVLM: x and B per key/value head, shared by its query heads
            x, B = (t.repeat_interleave(self.num_heads // config.xb_heads, dim=2) for t in (x, B))
        B = B * config.sc_input_scale
        C = C.unflatten(-1, (self.n_groups, self.state_size))
        dtype = compute_dtype(dt.dtype)
        dt = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype)).clamp(*config.time_step_limit) * config.sc_dt_scale
        log_decay = dt * -torch.exp(self.A_log.to(dtype)) + math.log(config.sc_decay_scale)
        state = read_state(cache, self.layer_idx, self.state_shapes())
        if (
            self.state_norm_threshold is not None
            and cache is not None
            and hidden.shape[1] == 1
            and config.sc_state_norm_chunk > 1
        ):
            warnings.warn(STATE_NORM_DECODING_WARNING.format(chunk=config.sc_state_norm_chunk), stacklevel=2)
        if config.sc_sliding_window is not None or self.state_norm_threshold is not None:
            scan = self.sliding_window_scan if config.sc_sliding_window is not None else self.scan_with_state_norm
            inputs = (x, dt, log_decay, B, C)
            if resets is None:
                y, state = scan(*inputs, initial_state=state, mask=attention_mask)
            else:
                y, state = run_by_segments(scan, inputs, resets, attention_mask, state)
        else:
            y, final = ssd(
                x,
                dt,
                log_decay,
                B,
                C,
                None if state is None else state[0],
                attention_mask,
                resets=resets,
                chunk_size=config.chunk_size,
                backend=config.kernel_backend,
            )
            state = (final,)
        write_state(cache, self.layer_idx, state)
        y = y + x * self.D[:, None].to(x.dtype)
        return self.out_proj(self.norm(y.flatten(-2), z))

    def sliding_window_scan(self, x, dt, log_decay, B, C, initial_state=None, mask=None):
        """`sliding_window_scan` with this layer's window."""
        return sliding_window_scan(x, dt, log_decay, B, C, initial_state, mask, self.config.sc_sliding_window)

    def scan_with_state_norm(self, x, dt, log_decay, B, C, initial_state=None, mask=None):
        """The SSD operator over pieces of `sc_state_norm_chunk` real tokens (counted per row, so padding shifts
        nothing), each head's state clamped to norm <= τ after every piece and at the end of the call (hence after
        every decoded token). initial_state `(h [B, H, P, N], real tokens so far [B])` or None; returns `(y, state)`."""
        batch, steps = x.shape[:2]
        h, count = (None, dt.new_zeros(batch)) if initial_state is None else initial_state
        real = torch.ones(batch, steps, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        piece = torch.div(count[:, None] + real.cumsum(1) - 1, self.config.sc_state_norm_chunk, rounding_mode="floor")
        y = torch.zeros_like(x)
        for k in piece[real].unique().tolist():
            select = real & (piece == k)
            columns = select.any(0).nonzero()
            span = slice(int(columns[0]), int(columns[-1]) + 1)
            part, h = ssd(
                x[:, span],
                dt[:, span],
                log_decay[:, span],
                B[:, span],
                C[:, span],
                h,
                select[:, span],
                chunk_size=self.config.chunk_size,
                backend=self.config.kernel_backend,
            )
            y[:, span] += part
            h = clamp_state_norm(h, self.state_norm_threshold)
        if h is None:  # nothing real in this call
            h = x.new_zeros(batch, self.num_heads, self.head_dim, self.state_size, dtype=dt.dtype)
        return y, (h, count + real.sum(1))


def sliding_window_scan(x, dt, log_decay, B, C, state, mask, window: int):
    """Stuffed Mamba's state-level sliding window, streamed with two states: `older` (read by the output) and
    `newer`, both updated every token; every `window` real tokens `older` takes `newer`'s place and `newer`
    restarts from zero, so the output at real token c reads exactly the tokens since window * (c // window - 1)
    (from 0 while c < window): between `window` + 1 and 2 `window` of them.

    x `[B, T, H, P]`, dt, log_decay `[B, T, H]`, B, C `[B, T, G, N]`, state `(older, newer, count [B])` or None.
    Returns `(y [B, T, H, P], (older, newer, count))`."""
    batch, steps, heads, head_dim = x.shape
    if state is None:
        zeros = x.new_zeros(batch, heads, head_dim, B.shape[-1], dtype=dt.dtype)
        state = (zeros, zeros, dt.new_zeros(batch))
    older, newer, count = state
    real = torch.ones(batch, steps, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    outputs = []
    # unbind, not [:, t]: the backward of T slices would write T full-size gradients (quadratic in T)
    for x_t, dt_t, a_t, b_t, c_t, real_t in zip(*(t.unbind(1) for t in (x, dt, log_decay, B, C, real))):
        restart = real_t & (count > 0) & (torch.remainder(count, window) == 0)
        older = torch.where(restart[:, None, None, None], newer, older)
        newer = torch.where(restart[:, None, None, None], 0.0, newer)
        keep = real_t[:, None]
        args = (x_t.to(dt.dtype) * keep[..., None], dt_t * keep, a_t * keep, b_t.to(dt.dtype), c_t.to(dt.dtype))
        y, older = step(*args, older)
        _, newer = step(*args, newer)
        outputs.append(y * keep[..., None])
        count = count + real_t
    return torch.stack(outputs, dim=1).to(x.dtype), (older, newer, count)


def clamp_state_norm(state: torch.Tensor, threshold: float | list[float]) -> torch.Tensor:
    """Stuffed Mamba's state normalisation done as intended: each head's `[P, N]` state rescaled to Frobenius
    norm <= τ (the reference code multiplies by norm / τ instead, which enlarges it). state `[B, H, P, N]`."""
    tau = torch.as_tensor(threshold, dtype=state.dtype, device=state.device).reshape(-1, 1, 1)
    norm = torch.linalg.matrix_norm(state, keepdim=True)
    return state * torch.clamp(tau / norm.clamp_min(torch.finfo(state.dtype).tiny), max=1.0)


def hybrid_mixer(config: Mamba2Config, layer_idx: int) -> nn.Module:
    """Softmax attention for the blocks in `config.attention_layers`, Mamba-2 for the others."""
    return (
        CausalSelfAttention(config, layer_idx)
        if layer_idx in config.attention_layers
        else Mamba2Mixer(config, layer_idx)
    )


class Mamba2Model(SeqModel):
    config_class = Mamba2Config
    mixer_class = staticmethod(hybrid_mixer)


class Mamba2ForCausalLM(SeqForCausalLM):
    config_class = Mamba2Config
    backbone_class = Mamba2Model


class Mamba2ForSequenceClassification(SeqForSequenceClassification):
    config_class = Mamba2Config
    backbone_class = Mamba2Model
