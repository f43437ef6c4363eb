"""Miras model classes: a test-time memory mixer (Moneta, Yaad, Memora) and sliding-window attention
(`docs/architectures/miras.md`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache
from transformers import initialization as init

from hf_seqplugins import (
    RMSNorm,
    SeqForCausalLM,
    SeqForSequenceClassification,
    SeqModel,
    SlidingWindowAttention,
    compute_dtype,
    read_state,
    run_by_segments,
    write_state,
)
from hf_seqplugins.kernels.test_time_memory import state_shapes, test_time_memory

from .configuration import MirasConfig

# Gates are kept strictly inside the operator's domain: a sigmoid or softplus of a large negative pre-activation
# rounds to 0, and alpha = 0 (log 0 in the chunked decay) or delta = 0 (an empty Huber region) is refused.
MIN_RETENTION = 1e-6
MIN_DELTA = 1e-6
# Initial gates (`MirasMixer.init_mixer_weights`): eta as a fraction of eta_max, alpha, Yaad's delta.
INITIAL_ETA_FRACTION = 0.02
INITIAL_RETENTION = 0.999
INITIAL_DELTA = 1.0
L2_EPS = 1e-6
MEMORA_LOG_WEIGHT_STD = 3.0


def _real(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`[B, T]` bool, True at real tokens."""
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask


def _run(function, sequences, state, mask, resets):
    """``function(*sequences, initial_state=state, mask=mask)``, one packed sequence per row when `resets` is given."""
    if resets is None:
        return function(*sequences, initial_state=state, mask=mask)
    return run_by_segments(function, sequences, resets, mask, state)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _moneta_accumulator_std(power: float, size: int) -> float:
    """The spread s of Moneta's initial accumulators A ~ N(0, s^2) of `size` entries whose weights
    ``A / ||A||_q^(q - 2)`` (q = `power`) have entries of spread 1: ``||A||_q^q ≈ size s^q m_q`` (m_q = E|z|^q of a
    standard normal) gives weights of spread ``s^(3 - q) / (size m_q)^((q - 2) / q)``. At q = 3 that spread does not
    depend on s, and s = 1 is returned."""
    if power == 3:
        return 1.0
    moment = 2 ** (power / 2) * math.gamma((power + 1) / 2) / math.sqrt(math.pi)
    return (size * moment) ** ((power - 2) / (power * (3 - power)))


class LowRankGate(nn.Module):
    """``x [B, T, D] -> up(down(x)) [B, T, H]``: a gate's pre-activation through rank r (`down` `[D -> r]`, `up`
    `[r -> H]` with bias)."""

    def __init__(self, hidden_size: int, rank: int, heads: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class MirasMixer(nn.Module):
    """Test-time memory: ``hidden [B, T, D]`` -> q, k, v `[B, T, H, d]` (linear projections, then a depthwise causal
    convolution of kernel K over the 3 H d channels, then q and k l2-normalised per head) and per-head, per-token
    gates `[B, T, H, G]` (eta = eta_max sigmoid, alpha = sigmoid, and for Yaad delta = softplus, each from a low-rank
    projection; G = 3 for Yaad, else 2) -> `test_time_memory` outputs `[B, T, H, d]` -> per-head RMSNorm, times
    ``sigmoid(gate_proj(x))`` -> `out_proj` `[B, T, D]`.

    Parameters: `q_proj`, `k_proj`, `v_proj`, `gate_proj` `[D -> H*d]`, `conv_weight` `[3 H d, K]`, `conv_bias`
    `[3 H d]`, `eta_gate`, `alpha_gate` (and Yaad's `delta_gate`) `[D -> r -> H]`, the learned initial memory
    `memory_w1` `[H, d, E]` and `memory_w2` `[H, E, d]` (Memora: log-weights), `norm` `[d]`, `out_proj`
    `[H*d -> D]`.

    The convolution reads the last K real inputs (padding anywhere in a row is skipped, not read as zeros) and
    restarts at every packed sequence; the memory restarts from the learned initial memory there. The cache holds
    the last K - 1 real convolution inputs `[B, K - 1, 3 H d]` and the operator's state ``(X1 [B, H, d, E],
    X2 [B, H, E, d], C1, C2, count [B])``: offsets from the initial memory, so its size does not grow with the
    tokens decoded.
    """

    def __init__(self, config: MirasConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim, self.memory_hidden = config.num_heads, config.head_width, config.memory_hidden
        self.kernel = config.conv_kernel_size
        width = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(3 * width, self.kernel))
        self.conv_bias = nn.Parameter(torch.zeros(3 * width))
        self.eta_gate = LowRankGate(config.hidden_size, config.gate_rank, self.num_heads)
        self.alpha_gate = LowRankGate(config.hidden_size, config.gate_rank, self.num_heads)
        self.delta_gate = None
        if config.memory_variant == "yaad":
            self.delta_gate = LowRankGate(config.hidden_size, config.gate_rank, self.num_heads)
        self.memory_w1 = nn.Parameter(torch.empty(self.num_heads, self.head_dim, self.memory_hidden))
        self.memory_w2 = nn.Parameter(torch.empty(self.num_heads, self.memory_hidden, self.head_dim))
        self.norm = RMSNorm(self.head_dim, config.norm_eps)
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.out_proj = nn.Linear(width, config.hidden_size, bias=False)

    def init_mixer_weights(self) -> None:
        """Convolution uniform in ±1/sqrt(K), bias 0. The initial memory is chosen so that the memory starts well
        conditioned, an inner step of size eta changing it by a fraction of order eta:

        - Yaad: W1, W2 ~ N(0, 1). Keys are unit vectors, so each hidden pre-activation ``W2 k`` is N(0, 1); the layer
          norm after W1 makes its scale a pure inner learning rate, and with unit entries the inner objective's
          curvature in W1 and W2 is of order 1, as the delta rule's with unit keys (N(0, 1/E) for W1 would make it
          of order E: every token would overwrite the memory).
        - Moneta: accumulators A ~ N(0, s^2) with s chosen so that the weights ``A / ||A||_q^(q-2)`` have unit
          entries (`_moneta_accumulator_std`), and the initial eta scaled by s, so that a step changes the weights by
          the same fraction as Yaad's.
        - Memora: log-weights N(0, 3^2). Its weights are row-wise softmaxes, positive and averaging their inputs, so
          the layer norm after W1 divides by a small spread unless the rows are far from uniform; a wide spread of
          log-weights keeps that division well conditioned (N(0, 1) leaves a spread of about 1e-3 at d = 64,
          E = 256).

        Gate biases: eta = 0.02 eta_max (Moneta: times s, at most eta_max / 2), alpha = 0.999 and Yaad's delta = 1
        (its outer branch then clips every component of the output gradient at 1, as an elementwise Huber loss
        does)."""
        bound = 1 / math.sqrt(self.kernel)
        init.uniform_(self.conv_weight, -bound, bound)
        init.zeros_(self.conv_bias)
        variant, eta = self.config.memory_variant, INITIAL_ETA_FRACTION
        if variant == "memora":
            spread = MEMORA_LOG_WEIGHT_STD
        elif variant == "moneta":
            spread = _moneta_accumulator_std(self.config.retention_power, self.head_dim * self.memory_hidden)
            eta = min(eta * spread, 0.5)
        else:
            spread = 1.0
        init.normal_(self.memory_w1, std=spread)
        init.normal_(self.memory_w2, std=spread)
        init.constant_(self.eta_gate.up.bias, math.log(eta / (1 - eta)))
        init.constant_(self.alpha_gate.up.bias, math.log(INITIAL_RETENTION / (1 - INITIAL_RETENTION)))
        if self.delta_gate is not None:
            init.constant_(self.delta_gate.up.bias, _inverse_softplus(INITIAL_DELTA))

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-row shapes of the cached state `(history, X1, X2, C1, C2, count)`."""
        memory = state_shapes(1, self.num_heads, self.head_dim, self.memory_hidden)
        return [(self.kernel - 1, 3 * self.num_heads * self.head_dim), *(shape[1:] for shape in memory)]

    def convolve(self, x, initial_state=None, mask=None):
        """x `[B, T, C]`, state `(history [B, K - 1, C],)` or None -> `(conv(x) [B, T, C], (history,))`.

        The history and the real current inputs are moved into one compact sequence per row (in order; padded
        inputs go to a discarded slot), convolved there, and each real token's output is read back at its place in
        it. Runs in x's dtype."""
        batch, steps, channels = x.shape
        before = self.kernel - 1
        history = x.new_zeros(batch, before, channels) if initial_state is None else initial_state[0].to(x.dtype)
        real = torch.cat([torch.ones(batch, before, dtype=torch.bool, device=x.device), _real(x, mask)], dim=1)
        entries = torch.cat([history, torch.where(real[:, before:, None], x, 0)], dim=1)  # [B, K - 1 + T, C]
        rank = real.long().cumsum(1) - 1  # place of each real entry in the compact sequence
        slot = torch.where(real, rank, before + steps)[..., None].expand_as(entries)
        compact = x.new_zeros(batch, before + steps + 1, channels).scatter(1, slot, entries)[:, :-1]
        weight, bias = self.conv_weight.to(x.dtype), self.conv_bias.to(x.dtype)
        out = F.conv1d(compact.transpose(1, 2), weight[:, None], bias, groups=channels).transpose(1, 2)  # [B, T, C]
        y = out.gather(1, (rank[:, before:] - before).clamp_min(0)[..., None].expand(batch, steps, channels))
        count = real.sum(1, keepdim=True)  # the compact sequence's length, >= K - 1
        last = count - before + torch.arange(before, device=x.device)
        return y, (compact.gather(1, last[..., None].expand(batch, before, channels)),)

    def gates(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden `[B, T, D]` -> `[B, T, H, G]` in the compute dtype: (eta, alpha) or Yaad's (eta, alpha, delta)."""
        dtype = compute_dtype(hidden.dtype)
        eta = self.config.eta_max * torch.sigmoid(self.eta_gate(hidden).to(dtype))
        alpha = torch.sigmoid(self.alpha_gate(hidden).to(dtype)).clamp_min(MIN_RETENTION)
        gates = [eta, alpha]
        if self.delta_gate is not None:
            gates.append(F.softplus(self.delta_gate(hidden).to(dtype)).clamp_min(MIN_DELTA))
        return torch.stack(gates, dim=-1)

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden `[B, T, D]`, attention_mask and resets `[B, T]` bool or None -> `[B, T, D]`."""
        batch, steps, _ = hidden.shape
        heads, size, config = self.num_heads, self.head_dim, self.config
        dtype = compute_dtype(hidden.dtype)
        state = read_state(cache, self.layer_idx, self.state_shapes())
        history, memory_state = (None, None) if state is None else (state[:1], state[1:])
        projected = torch.cat([self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)], dim=-1).to(dtype)
        mixed, history = _run(self.convolve, (projected,), history, attention_mask, resets)
        q, k, v = mixed.view(batch, steps, 3, heads, size).unbind(2)
        q, k = F.normalize(q, dim=-1, eps=L2_EPS), F.normalize(k, dim=-1, eps=L2_EPS)
        outputs, memory_state = test_time_memory(
            q,
            k,
            v,
            self.gates(hidden),
            (self.memory_w1, self.memory_w2),
            memory_state,
            attention_mask,
            config.memory_variant,
            config.memory_chunk,
            config.retrieval,
            config.bias_power,
            config.retention_power,
            config.memora_scale,
            config.smooth_eps,
            resets=resets,
            backend=config.kernel_backend,
        )
        write_state(cache, self.layer_idx, (*history, *memory_state))
        gate = torch.sigmoid(self.gate_proj(hidden).to(dtype)).view(batch, steps, heads, size)
        y = self.norm(outputs) * gate
        return self.out_proj(y.reshape(batch, steps, -1).to(hidden.dtype))


def miras_mixer(config: MirasConfig, layer_idx: int) -> nn.Module:
    """Sliding-window attention at `config.swa_layers`, the test-time memory elsewhere."""
    if config.block_kind(layer_idx) == "swa":
        return SlidingWindowAttention(config, layer_idx)
    return MirasMixer(config, layer_idx)


class MirasModel(SeqModel):
    config_class = MirasConfig
    mixer_class = staticmethod(miras_mixer)


class MirasForCausalLM(SeqForCausalLM):
    config_class = MirasConfig
    backbone_class = MirasModel


class MirasForSequenceClassification(SeqForSequenceClassification):
    config_class = MirasConfig
    backbone_class = MirasModel
