"""Pointwise cell math shared by the loop backends of the head-wise RNN operator.

Gate orders follow PyTorch and FlashRNN: Elman `[a]`, LSTM `[i, f, g, o]`, GRU `[r, z, n]`,
sLSTM `[i, f, z, o]`. States: Elman and GRU `(h,)`, LSTM `(h, c)`, sLSTM `(h, c, n, m)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CELLS = ("elman_tanh", "elman_relu", "lstm", "gru", "slstm")
NUM_GATES = {"elman_tanh": 1, "elman_relu": 1, "lstm": 4, "gru": 3, "slstm": 4}
NUM_STATES = {"elman_tanh": 1, "elman_relu": 1, "lstm": 2, "gru": 1, "slstm": 4}


def recurrent_part(
    recurrent_weight: torch.Tensor, h: torch.Tensor, recurrent_bias: torch.Tensor | None
) -> torch.Tensor:
    """`R h (+ b)` per gate and head: R `[G, NH, DH, DR]`, h `[B, NH, DR]` -> `[B, G, NH, DH]`."""
    out = torch.einsum("gndp,bnp->bgnd", recurrent_weight, h)
    return out if recurrent_bias is None else out + recurrent_bias


def step(
    cell: str,
    gates_x: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    recurrent_weight: torch.Tensor,
    recurrent_bias: torch.Tensor | None,
    projection: torch.Tensor | None = None,
    normalizer_clamp: bool = True,
) -> tuple[torch.Tensor, ...]:
    """One time step. gates_x `[B, G, NH, DH]`; returns the new state tuple (its first entry is h)."""
    recurrent = recurrent_part(recurrent_weight, state[0], recurrent_bias)
    return pointwise(cell, gates_x, recurrent, state, projection, normalizer_clamp)


def pointwise(
    cell: str,
    gates_x: torch.Tensor,
    recurrent: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    projection: torch.Tensor | None = None,
    normalizer_clamp: bool = True,
) -> tuple[torch.Tensor, ...]:
    """The cell's nonlinearity given both parts of the gate pre-activations, each `[B, G, NH, DH]`.

    They stay separate because GRU multiplies only the recurrent part of its candidate by the reset gate.
    """
    h = state[0]
    if cell == "gru":
        r = torch.sigmoid(gates_x[:, 0] + recurrent[:, 0])
        z = torch.sigmoid(gates_x[:, 1] + recurrent[:, 1])
        n = torch.tanh(gates_x[:, 2] + r * recurrent[:, 2])
        return ((1 - z) * n + z * h,)
    pre = gates_x + recurrent
    if cell in ("elman_tanh", "elman_relu"):
        return (torch.tanh(pre[:, 0]) if cell == "elman_tanh" else torch.relu(pre[:, 0]),)
    if cell == "lstm":
        c = torch.sigmoid(pre[:, 1]) * state[1] + torch.sigmoid(pre[:, 0]) * torch.tanh(pre[:, 2])
        h_new = torch.sigmoid(pre[:, 3]) * torch.tanh(c)
        if projection is not None:
            h_new = torch.einsum("npd,bnd->bnp", projection, h_new)
        return h_new, c
    if cell == "slstm":
        _, c, n, m = state
        i_pre, f_pre, z_pre, o_pre = pre.unbind(1)
        log_f_plus_m = m + F.logsigmoid(f_pre)
        first_step = n == 0
        m_new = torch.where(first_step, i_pre, torch.maximum(i_pre, log_f_plus_m))
        i_gate = torch.exp(i_pre - m_new)
        # From a zero state the forget term multiplies zeros; -inf keeps exp (and its gradient) finite there.
        f_gate = torch.exp(torch.where(first_step, torch.full_like(m, -torch.inf), log_f_plus_m - m_new))
        c_new = f_gate * c + i_gate * torch.tanh(z_pre)
        n_new = f_gate * n + i_gate
        if normalizer_clamp:
            n_new = n_new.clamp_min(1.0)
        h_new = torch.sigmoid(o_pre) * c_new / n_new
        return h_new, c_new, n_new, m_new
    raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")


def zero_where(starts: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The state with rows where `starts` `[B]` is True set to zeros (a new sequence begins there)."""
    keep = ~starts.view(-1, 1, 1)
    return tuple(torch.where(keep, s, torch.zeros((), dtype=s.dtype, device=s.device)) for s in state)
