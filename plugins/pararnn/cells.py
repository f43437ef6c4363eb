"""ParaRNN's cells (`docs/architectures/pararnn.md`, section 'Cells'): recurrences whose Jacobian ∂h_t/∂h_{t-1} is
diagonal across channels (ParaGRU) or made of small diagonal blocks (ParaLSTM's 2 x 2 over `[c, h]`, the diagonal
sLSTM's 4 x 4 over `[h, c, n, m]`), so Newton's linear solves are scans.

A cell is an `nn.Module` with `block` (None: a state `[..., N]`; m: `[..., N, m]`), `input_rows` (the input
projection gives `[..., input_rows, N]` pre-activations per step), `output(states)` (the `[..., N]` features
the block reads), `initial_bias()` (the input projection's bias at init), `step(h_prev, x) -> h` and optionally
`jacobian(h_prev, x)` (else the engine uses forward-mode autograd). `register_cell(name, cls)` makes a new cell
available as `ParaRNNConfig(cell=name)`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

__all__ = ["CELLS", "ParaCell", "ParaGRUCell", "ParaLSTMCell", "SLSTMDiagCell", "register_cell"]


class ParaCell(nn.Module):
    """Base class: recurrent weights `A [input_rows, N]` (diagonal: channel n reads only its own state), init
    N(0, 2/(5N)) (the "xlstm" small init; `docs/architectures/pararnn.md`, section 'Initialisation')."""

    block: int | None = None
    input_rows: int = 3

    def __init__(self, state_size: int):
        super().__init__()
        self.state_size = state_size
        self.A = nn.Parameter(torch.empty(self.input_rows, state_size))

    def init_cell_weights(self) -> None:
        init.normal_(self.A, std=math.sqrt(2 / (5 * self.state_size)))

    def initial_bias(self) -> torch.Tensor:
        """`[input_rows, N]`: zero except row 0 (GRU's update, LSTM's forget gate) = -linspace(0, 1, N)."""
        bias = torch.zeros(self.input_rows, self.state_size)
        bias[0] = -torch.linspace(0, 1, self.state_size)
        return bias

    def initial_state(self, batch: int, device, dtype) -> torch.Tensor:
        shape = (batch, self.state_size) if self.block is None else (batch, self.state_size, self.block)
        return torch.zeros(shape, device=device, dtype=dtype)

    def output(self, states: torch.Tensor) -> torch.Tensor:
        return states

    def step(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ParaGRUCell(ParaCell):
    """ParaGRU, x rows (z, r, candidate):
    ``z = σ(A_z h + x_z)``, ``r = σ(A_r h + x_r)``, ``ĥ = tanh(A_h (h r) + x_h)``, ``h' = z ĥ + (1 - z) h``."""

    def step(self, h, x):
        z = torch.sigmoid(self.A[0] * h + x[..., 0, :])
        r = torch.sigmoid(self.A[1] * h + x[..., 1, :])
        candidate = torch.tanh(self.A[2] * (h * r) + x[..., 2, :])
        return z * candidate + (1 - z) * h

    def jacobian(self, h, x):
        """Diagonal ∂h'/∂h `[..., N]`."""
        a_z, a_r, a_h = self.A.to(h.dtype)
        z = torch.sigmoid(a_z * h + x[..., 0, :])
        r = torch.sigmoid(a_r * h + x[..., 1, :])
        candidate = torch.tanh(a_h * (h * r) + x[..., 2, :])
        d_candidate = (1 - candidate**2) * a_h * (r + h * r * (1 - r) * a_r)
        return (1 - z) + (candidate - h) * z * (1 - z) * a_z + z * d_candidate


class ParaLSTMCell(ParaCell):
    """ParaLSTM, the coupled-input-forget-gate LSTM with peepholes; state `[..., N, 2]` = (c, h),
    x rows (f, o, candidate), peepholes `C [2, N]` (f, o):
    ``f = σ(A_f h + x_f + C_f c)``, ``c' = f c + (1 - f) tanh(A_c h + x_c)``, ``o = σ(A_o h + x_o + C_o c')``,
    ``h' = o tanh(c')``."""

    block = 2

    def __init__(self, state_size: int):
        super().__init__(state_size)
        self.C = nn.Parameter(torch.empty(2, state_size))

    def init_cell_weights(self) -> None:
        super().init_cell_weights()
        init.normal_(self.C, std=math.sqrt(2 / (5 * self.state_size)))

    def output(self, states):
        return states[..., 1]

    def _gates(self, state, x):
        c, h = state.unbind(-1)
        (a_f, a_o, a_c), (c_f, c_o) = self.A.to(state.dtype), self.C.to(state.dtype)
        f = torch.sigmoid(a_f * h + x[..., 0, :] + c_f * c)
        candidate = torch.tanh(a_c * h + x[..., 2, :])
        c_new = f * c + (1 - f) * candidate
        o = torch.sigmoid(a_o * h + x[..., 1, :] + c_o * c_new)
        return c, h, f, candidate, c_new, o

    def step(self, state, x):
        _, _, _, _, c_new, o = self._gates(state, x)
        return torch.stack([c_new, o * torch.tanh(c_new)], dim=-1)

    def jacobian(self, state, x):
        """2 x 2 blocks `[..., N, 2, 2]`: rows (c', h'), columns (c, h)."""
        c, h, f, candidate, c_new, o = self._gates(state, x)
        (a_f, a_o, a_c), (c_f, c_o) = self.A.to(state.dtype), self.C.to(state.dtype)
        d_f = f * (1 - f)
        dc_dc = f + d_f * c_f * (c - candidate)
        dc_dh = d_f * a_f * (c - candidate) + (1 - f) * (1 - candidate**2) * a_c
        tanh_c = torch.tanh(c_new)
        d_o = o * (1 - o)
        dh_dc = dc_dc * (d_o * c_o * tanh_c + o * (1 - tanh_c**2))
        dh_dh = tanh_c * d_o * (a_o + c_o * dc_dh) + o * (1 - tanh_c**2) * dc_dh
        return torch.stack([torch.stack([dc_dc, dc_dh], -1), torch.stack([dh_dc, dh_dh], -1)], -2)


class SLSTMDiagCell(ParaCell):
    """sLSTM (`docs/architectures/rnn.md`, section 'sLSTM: stabiliser and normalizer') with diagonal recurrent weights,
    state `[..., N, 4]` = (h, c, n, m), x rows (i, f, z, o): ``m' = max(ĩ, m + logσ(f̃))``, ``i = exp(ĩ - m')``,
    ``f = exp(m + logσ(f̃) - m')``, ``c' = f c + i tanh(z̃)``, ``n' = f n + i``, ``h' = σ(õ) c' / n'`` with
    ``ĩ = A_i h + x_i`` etc. (no normaliser clamp). From the zero state the first m differs from the reference's m_1 = ĩ
    but h, the stabiliser-free quantity, is the same. Written as its step only: the engine takes its 4 x 4 Jacobian
    blocks from forward-mode autograd."""

    block = 4
    input_rows = 4

    def initial_bias(self) -> torch.Tensor:
        """Forget-gate bias linspace(3, 6, N) (long memory at init, as xLSTM), the rest zero."""
        bias = torch.zeros(self.input_rows, self.state_size)
        bias[1] = torch.linspace(3, 6, self.state_size)
        return bias

    def output(self, states):
        return states[..., 0]

    def step(self, state, x):
        h, c, n, m = state.unbind(-1)
        a = self.A.to(state.dtype)
        i_pre, f_pre, z_pre, o_pre = (a[row] * h + x[..., row, :] for row in range(4))
        log_forget = m + torch.nn.functional.logsigmoid(f_pre)
        m_new = torch.maximum(i_pre, log_forget)
        i, f = torch.exp(i_pre - m_new), torch.exp(log_forget - m_new)
        c_new, n_new = f * c + i * torch.tanh(z_pre), f * n + i
        return torch.stack([torch.sigmoid(o_pre) * c_new / n_new, c_new, n_new, m_new], dim=-1)


CELLS: dict[str, type[ParaCell]] = {"gru": ParaGRUCell, "lstm_cifg": ParaLSTMCell, "slstm_diag": SLSTMDiagCell}


def register_cell(name: str, cell_class: type[ParaCell]) -> None:
    """Make `cell_class` usable as `ParaRNNConfig(cell=name)`: it needs only `step` (and `block`, `input_rows`,
    `output` if they differ from the defaults); the engine derives its Jacobian by autograd unless it defines one."""
    if not (isinstance(cell_class, type) and issubclass(cell_class, ParaCell)):
        raise TypeError(f"register_cell: {cell_class!r} must be a ParaCell subclass")
    if name in CELLS and CELLS[name] is not cell_class:
        raise ValueError(f"register_cell: a cell named {name!r} is already registered ({CELLS[name].__name__})")
    CELLS[name] = cell_class
