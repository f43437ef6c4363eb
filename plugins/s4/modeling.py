"""S4, S4D and LSSL model classes: one state-space mixer (`docs/architectures/s4.md`, section 'Block') in the shared
pre-norm blocks."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache
from transformers import initialization as init

from hf_seqplugins import SeqForCausalLM, SeqForSequenceClassification, SeqModel, compute_dtype, read_state, write_state
from hf_seqplugins.kernels.lti_ssm import (
    DenseSystem,
    DiagonalSystem,
    DPLRSystem,
    lti_ssm,
    lti_ssm_step,
    select_outputs,
)

from .configuration import LSSLConfig, S4Config, S4DConfig, StateSpaceConfig
from .hippo import hippo, nplr_legs

ACTIVATION_FUNCTIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu, "tanh": torch.tanh, "identity": lambda x: x}


def _complex(parameter: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A complex tensor stored as real `[..., 2]` (safetensors and half precision have no complex) -> `[...]`."""
    return torch.view_as_complex(parameter.to(dtype))


@functools.lru_cache(maxsize=8)
def _fixed_hippo(measure: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return hippo(measure, size)


class StateSpaceMixer(nn.Module):
    """``u [B, T, H] -> SSM(u) + D u -> activation -> tied dropout -> output linear (+ GLU) -> [B, T, H]``.

    The SSM runs as `lti_ssm` (the convolution in training and prefill) and as single recurrent steps when
    decoding; its state `[B, H, N...]` lives in the cache (complex states as real `[..., 2]`). Subclasses
    create the SSM parameters and build the discretised `system(dtype)`; `optimizer_settings()` names the
    SSM parameters that get their own learning rate and no weight decay.
    """

    complex_state: bool

    def __init__(self, config: StateSpaceConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.channels, self.outputs = config.hidden_size, config.channels
        self.activation = ACTIVATION_FUNCTIONS[config.activation]
        self.D = nn.Parameter(torch.empty(self.outputs, self.channels))
        width = 2 * self.channels if config.final_act == "glu" else self.channels
        self.output_linear = nn.Linear(self.outputs * self.channels, width)
        self._decoding_system = None

    @property
    def c_outputs(self) -> int:
        """Rows of C: M, or 2M with the anti-causal direction."""
        return self.outputs * (2 if self.config.bidirectional else 1)

    def system(self, dtype: torch.dtype):
        raise NotImplementedError

    def optimizer_settings(self) -> dict[str, dict]:
        raise NotImplementedError

    def init_mixer_weights(self) -> None:
        """D ~ N(0, 1); the output linear keeps PyTorch's default (uniform, bound 1/sqrt(fan_in)) with zero bias."""
        init.normal_(self.D)
        bound = 1 / math.sqrt(self.output_linear.in_features)
        init.uniform_(self.output_linear.weight, -bound, bound)
        init.zeros_(self.output_linear.bias)

    def decoding_system(self, dtype: torch.dtype):
        """The system for recurrent steps, S4's dense Ā built once and reused while no parameter changes
        (without gradients; with them it is rebuilt so gradients reach the parameters)."""
        if torch.is_grad_enabled():
            return self._dense(self.system(dtype))
        key = (dtype, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        if self._decoding_system is None or self._decoding_system[0] != key:
            self._decoding_system = (key, self._dense(self.system(dtype)))
        return self._decoding_system[1]

    @staticmethod
    def _dense(system):
        return system.dense() if isinstance(system, DPLRSystem) else system

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, H]`, attention_mask and resets `[B, T]` bool or None -> `[B, T, H]`."""
        config = self.config
        if config.bidirectional and cache is not None:
            raise ValueError(
                "a bidirectional state-space model sees future tokens: it cannot run with a cache (generate)"
            )
        state = read_state(cache, self.layer_idx)
        if state is not None:
            state = torch.view_as_complex(state[0].contiguous()) if self.complex_state else state[0]
        # kernels, FFTs and states in float32 even under autocast (`docs/architectures/s4.md`, section 'Numerics and
        # pitfalls')
        with torch.autocast(hidden.device.type, enabled=False):
            y, state = self.state_space(hidden, state, cache is not None, attention_mask, resets)
        if cache is not None:
            write_state(cache, self.layer_idx, (torch.view_as_real(state) if state.is_complex() else state,))
        y = self.activation(y + self.D.to(y.dtype) * hidden[:, :, None, :])
        if self.training and config.ssm_dropout > 0:  # one mask per (row, output channel) for all time steps
            y = y * F.dropout(y.new_ones(y.shape[0], 1, *y.shape[2:]), config.ssm_dropout)
        y = self.output_linear(y.flatten(2))
        return F.glu(y, dim=-1) if config.final_act == "glu" else y

    def state_space(self, u, state, keep_state: bool, mask=None, resets=None):
        """u `[B, T, H]` -> (y `[B, T, M, H]` in u's dtype, final state or None): one recurrent step of the
        precomputed decoding system when decoding from a state, else the operator (both directions when
        bidirectional; the backward one over the flipped sequences, whose starts are the flipped ends)."""
        config = self.config
        dtype = compute_dtype(self.D.dtype)  # kernels, FFTs and states never in half precision
        if state is not None and u.shape[1] == 1:
            step = u[:, 0] if mask is None else u[:, 0] * mask[:, 0, None]
            y, state = lti_ssm_step(step, self.decoding_system(dtype), state)
            return y[:, None], state
        system = self.system(dtype)
        if not config.bidirectional:
            return lti_ssm(
                u, system, state, mask, resets=resets, return_final_state=keep_state, backend=config.kernel_backend
            )
        forward_part, backward_part = (
            select_outputs(system, slice(0, self.outputs)),
            select_outputs(system, slice(self.outputs, None)),
        )
        y, _ = lti_ssm(
            u, forward_part, None, mask, resets=resets, return_final_state=False, backend=config.kernel_backend
        )
        flipped_mask = None if mask is None else mask.flip(1)
        flipped_resets = None
        if resets is not None:
            flipped_resets = torch.zeros_like(resets)
            flipped_resets[:, 1:] = resets.flip(1)[:, :-1]
        backward, _ = lti_ssm(
            u.flip(1),
            backward_part,
            None,
            flipped_mask,
            resets=flipped_resets,
            return_final_state=False,
            backend=config.kernel_backend,
        )
        return y + backward.flip(1), None


class S4Mixer(StateSpaceMixer):
    """S4 (`config.structure` "dplr") or S4D ("diagonal"), `docs/architectures/s4.md`.

    Parameters (complex ones stored as real `[..., 2]`; S = n_ssm copies, channel h uses copy h % S):
    `dt_param [H]` (Δ = exp or softplus of it), `A_real`, `A_imag [S, N/2]` (Λ = -exp(A_real) - i A_imag),
    `B [S, N/2, 2]`, S4 only `P [R, S, N/2, 2]`, `C [M', H, N/2, 2]` (S4: the C̃ of `l_max`), `D [M, H]`.
    """

    complex_state = True

    def __init__(self, config: S4Config, layer_idx: int):
        super().__init__(config, layer_idx)
        copies, modes = config.num_ssm, config.state_size // 2
        self.dt_param = nn.Parameter(torch.empty(self.channels))
        self.A_real = nn.Parameter(torch.empty(copies, modes))
        self.A_imag = nn.Parameter(torch.empty(copies, modes))
        self.B = nn.Parameter(torch.empty(copies, modes, 2))
        self.P = nn.Parameter(torch.empty(config.rank, copies, modes, 2)) if config.structure == "dplr" else None
        self.C = nn.Parameter(torch.empty(self.c_outputs, self.channels, modes, 2))

    def optimizer_settings(self) -> dict[str, dict]:
        settings = (
            {"weight_decay": 0.0} if self.config.ssm_lr is None else {"lr": self.config.ssm_lr, "weight_decay": 0.0}
        )
        names = ["dt_param", "A_real", "A_imag", "B"] + (["P"] if self.P is not None else [])
        return {name: settings for name in names}

    def init_mixer_weights(self) -> None:
        """The S4 / S4D init: log Δ ~ U[log dt_min, log dt_max]; Λ from `config.init`; B = 1 (diag-*) or V* B (legs,
        imaginary part clipped to ±B_clip); P = V* P; C complex normal (parts N(0, 1/2)); S4's C̃ = C (I - Ā^l_max)."""
        super().init_mixer_weights()
        config = self.config
        copies, modes = self.A_real.shape
        low, high = math.log(config.dt_min), math.log(config.dt_max)
        dt = torch.exp(torch.rand(self.channels, dtype=torch.float64) * (high - low) + low)
        init.copy_(self.dt_param, dt.log() if config.dt_transform == "exp" else dt + torch.log(-torch.expm1(-dt)))
        n = torch.arange(modes, dtype=torch.float64)
        b = torch.ones(modes, dtype=torch.complex128)
        if config.init == "legs":
            lam, p, b, _ = nplr_legs(config.state_size)
            b = torch.complex(b.real, b.imag.clamp(-config.B_clip, config.B_clip))
            if self.P is not None:
                init.copy_(
                    self.P,
                    torch.view_as_real(p.expand(config.rank, copies, modes).contiguous()) / math.sqrt(config.rank),
                )
        elif config.init == "diag-lin":
            lam = -0.5 - 1j * math.pi * n
        elif config.init == "diag-inv":
            size = config.state_size
            lam = -0.5 - 1j * (size / math.pi) * (size / (2 * n + 1) - 1)
        else:  # diag-real
            lam = torch.complex(-(n + 1), torch.zeros_like(n))
        init.copy_(self.A_real, (-lam.real).log().expand(copies, modes))
        init.copy_(self.A_imag, (-lam.imag).expand(copies, modes))
        init.copy_(self.B, torch.view_as_real(b.expand(copies, modes).contiguous()))
        if getattr(self.C, "_is_hf_initialized", False):  # loaded
            return
        c = torch.randn(self.c_outputs, self.channels, modes, dtype=torch.complex128)
        if self.P is not None:
            with torch.no_grad():
                c = self.system(torch.float64, c_tilde=c).c_tilde_of(c)
        init.copy_(self.C, torch.view_as_real(c))

    def system(self, dtype: torch.dtype, c_tilde: torch.Tensor | None = None):
        """The discretised `DiagonalSystem` (S4D) or `DPLRSystem` (S4) in `dtype` (float32 or float64)."""
        config = self.config
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        repeats = self.channels // self.A_real.shape[0]
        lam = torch.complex(-torch.exp(self.A_real.to(dtype)), -self.A_imag.to(dtype)).repeat(repeats, 1)
        b = _complex(self.B, dtype).repeat(repeats, 1)
        c = _complex(self.C, dtype) if c_tilde is None else c_tilde.to(complex_dtype)
        raw = self.dt_param.to(dtype)
        dt = torch.exp(raw) if config.dt_transform == "exp" else F.softplus(raw)
        if self.P is not None:
            p = _complex(self.P, dtype).repeat(1, repeats, 1)
            return DPLRSystem(lam, p, b, c, dt, config.l_max)
        step = dt[:, None] * lam
        if config.discretization == "zoh":
            return DiagonalSystem(step, b * torch.expm1(step) / lam, c)
        return DiagonalSystem(torch.log((1 + step / 2) / (1 - step / 2)), b * dt[:, None] / (1 - step / 2), c)


class LSSLMixer(StateSpaceMixer):
    """LSSL: Ā = (I - α Δ A)^-1 (I + (1 - α) Δ A), B̄ = Δ (I - α Δ A)^-1 B per channel, dense and real.

    Parameters: `dt_param [H]` (log Δ), `C [M', H, N]`, `D [M, H]`, and with `learn_ab` > 0 `A [1 or H, N, N]`,
    `B [1 or H, N]` (else the fixed HiPPO matrices, recomputed rather than stored).
    """

    complex_state = False

    def __init__(self, config: LSSLConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        size = config.state_size
        self.dt_param = nn.Parameter(torch.empty(self.channels), requires_grad=config.dt_learn)
        copies = 1 if config.learn_ab == 1 else self.channels
        self.A = nn.Parameter(torch.empty(copies, size, size)) if config.learn_ab else None
        self.B = nn.Parameter(torch.empty(copies, size)) if config.learn_ab else None
        self.C = nn.Parameter(torch.empty(self.c_outputs, self.channels, size))

    def optimizer_settings(self) -> dict[str, dict]:
        dt = {"weight_decay": 0.0} if self.config.ssm_lr is None else {"lr": self.config.ssm_lr, "weight_decay": 0.0}
        settings = {"dt_param": dt}
        if self.A is not None:
            settings.update(
                A={"lr": self.config.ab_lr, "weight_decay": 0.0}, B={"lr": self.config.ab_lr, "weight_decay": 0.0}
            )
        return settings

    def init_mixer_weights(self) -> None:
        """The LSSL init: log Δ ~ U[log dt_min, log dt_max] ("random") or evenly log-spaced ("uniform"); A, B from
        HiPPO; C ~ N(0, 1)."""
        super().init_mixer_weights()
        config = self.config
        low, high = math.log(config.dt_min), math.log(config.dt_max)
        if config.dt_init == "random":
            log_dt = torch.rand(self.channels, dtype=torch.float64) * (high - low) + low
        else:
            log_dt = torch.linspace(low, high, self.channels, dtype=torch.float64)
        init.copy_(self.dt_param, log_dt)
        if self.A is not None:
            a, b = hippo(config.measure, config.state_size)
            init.copy_(self.A, a.expand_as(self.A))
            init.copy_(self.B, b.expand_as(self.B))
        init.normal_(self.C)

    def system(self, dtype: torch.dtype) -> DenseSystem:
        config = self.config
        if self.A is None:
            a, b = (t.to(device=self.C.device, dtype=dtype) for t in _fixed_hippo(config.measure, config.state_size))
        else:
            a, b = self.A.to(dtype), self.B.to(dtype)
        dt = torch.exp(self.dt_param.to(dtype))
        identity = torch.eye(config.state_size, dtype=dtype, device=self.C.device)
        implicit = identity - config.alpha * dt[:, None, None] * a
        a_bar = torch.linalg.solve(implicit, identity + (1 - config.alpha) * dt[:, None, None] * a)
        b_bar = torch.linalg.solve(implicit, dt[:, None] * b)
        return DenseSystem(a_bar, b_bar, self.C.to(dtype))


class _StateSpaceForCausalLM(SeqForCausalLM):
    def __init__(self, config: StateSpaceConfig):
        if config.bidirectional:
            raise ValueError(
                f"{type(self).__name__}: bidirectional=True sees future tokens; use it for sequence classification only"
            )
        super().__init__(config)


class S4Model(SeqModel):
    config_class = S4Config
    mixer_class = S4Mixer


class S4ForCausalLM(_StateSpaceForCausalLM):
    config_class = S4Config
    backbone_class = S4Model


class S4ForSequenceClassification(SeqForSequenceClassification):
    config_class = S4Config
    backbone_class = S4Model


class S4DModel(SeqModel):
    config_class = S4DConfig
    mixer_class = S4Mixer


class S4DForCausalLM(_StateSpaceForCausalLM):
    config_class = S4DConfig
    backbone_class = S4DModel


class S4DForSequenceClassification(SeqForSequenceClassification):
    config_class = S4DConfig
    backbone_class = S4DModel


class LSSLModel(SeqModel):
    config_class = LSSLConfig
    mixer_class = LSSLMixer


class LSSLForCausalLM(_StateSpaceForCausalLM):
    config_class = LSSLConfig
    backbone_class = LSSLModel


class LSSLForSequenceClassification(SeqForSequenceClassification):
    config_class = LSSLConfig
    backbone_class = LSSLModel
