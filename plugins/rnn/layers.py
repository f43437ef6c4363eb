"""Drop-in `torch.nn.RNN` / `LSTM` / `GRU` with a selectable kernel backend.

They *are* the torch layers (same constructor, parameter names, init and `forward(input, hx)`), so
`load_state_dict` from a `torch.nn.LSTM` works both ways. `backend` picks the implementation:
"torch" (and "auto" on CPU) runs PyTorch's own fused RNN kernels; "reference" and "triton" run the
head-wise RNN operator of `hf_seqplugins.kernels.rnn` layer by layer and direction by direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from hf_seqplugins import AUTO
from hf_seqplugins.kernels.rnn import OPERATOR, headwise_rnn

_CELL_OF_MODE = {"RNN_TANH": "elman_tanh", "RNN_RELU": "elman_relu", "LSTM": "lstm", "GRU": "gru"}


class _BackendSelectable:
    """Mixin for a torch RNN layer: same math, computed by the backend in `self.backend`."""

    def _init_backend(self, backend: str) -> None:
        if backend != AUTO and backend not in OPERATOR.backends:
            raise ValueError(
                f"{type(self).__name__}: unknown backend {backend!r}; choose from {[AUTO, *OPERATOR.backends]}"
            )
        self.backend = backend

    def forward(self, input, hx=None):
        # "auto" means PyTorch's own fused kernels (cuDNN on GPU) unless an override says otherwise.
        backend = OPERATOR.resolve("torch" if self.backend == AUTO else self.backend, input.data.device)
        if backend == "torch":
            return super().forward(input, hx)
        if isinstance(input, PackedSequence):
            raise TypeError(
                f"PackedSequence input is supported by backend 'torch' only (this layer's backend is {backend!r}); "
                "pad it and pass the padded tensor"
            )
        return self._forward_operator(input, hx, backend)

    def _forward_operator(self, input: torch.Tensor, hx, backend: str):
        is_lstm = self.mode == "LSTM"
        batched = input.dim() == 3
        if not batched and input.dim() != 2:
            raise ValueError(
                f"{type(self).__name__}: expected input of 2 (unbatched) or 3 dimensions, "
                f"got shape {tuple(input.shape)}"
            )
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
            if hx is not None:
                hx = tuple(h.unsqueeze(1) for h in hx) if is_lstm else hx.unsqueeze(1)
        x = input if self.batch_first else input.transpose(0, 1)
        batch, steps, _ = x.shape
        directions = 2 if self.bidirectional else 1
        hidden, out_size = self.hidden_size, self.proj_size or self.hidden_size
        if hx is None:
            zeros = x.new_zeros(self.num_layers * directions, batch, out_size)
            hx = (zeros, x.new_zeros(self.num_layers * directions, batch, hidden)) if is_lstm else zeros
        self.check_forward_args(input, hx, None)
        h0, c0 = hx if is_lstm else (hx, None)

        cell = _CELL_OF_MODE[self.mode]
        gates = self.weight_ih_l0.shape[0] // hidden
        layer_input, h_n, c_n = x, [], []
        for layer in range(self.num_layers):
            direction_outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                w_ih, w_hh = getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)
                b_ih = getattr(self, "bias_ih" + suffix) if self.bias else None
                b_hh = getattr(self, "bias_hh" + suffix) if self.bias else None
                projection = getattr(self, "weight_hr" + suffix).unsqueeze(0) if self.proj_size else None
                index = layer * directions + direction
                state = (h0[index].unsqueeze(1),) + ((c0[index].unsqueeze(1),) if is_lstm else ())
                sequence = layer_input.flip(1) if direction else layer_input
                outputs, final = headwise_rnn(
                    cell,
                    F.linear(sequence, w_ih, b_ih).view(batch, steps, gates, 1, hidden),
                    w_hh.view(gates, 1, hidden, out_size),
                    None if b_hh is None else b_hh.view(gates, 1, hidden),
                    initial_state=state,
                    projection=projection,
                    backend=backend,
                )
                outputs = outputs.squeeze(2)
                direction_outputs.append(outputs.flip(1) if direction else outputs)
                h_n.append(final[0].squeeze(1).to(x.dtype))
                if is_lstm:
                    c_n.append(final[1].squeeze(1).to(x.dtype))
            layer_input = torch.cat(direction_outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)

        output = layer_input if self.batch_first else layer_input.transpose(0, 1)
        h_n = torch.stack(h_n)
        state_out = (h_n, torch.stack(c_n)) if is_lstm else h_n
        if not batched:
            output = output.squeeze(0 if self.batch_first else 1)
            state_out = tuple(s.squeeze(1) for s in state_out) if is_lstm else state_out.squeeze(1)
        return output, state_out


class RNN(_BackendSelectable, nn.RNN):
    """`torch.nn.RNN` (Elman, tanh or relu) with `backend` in {"auto", "torch", "reference", "triton"}."""

    def __init__(self, *args, backend: str = AUTO, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)


class LSTM(_BackendSelectable, nn.LSTM):
    """`torch.nn.LSTM` (with `proj_size`) with `backend` in {"auto", "torch", "reference", "triton"}."""

    def __init__(self, *args, backend: str = AUTO, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)


class GRU(_BackendSelectable, nn.GRU):
    """`torch.nn.GRU` with `backend` in {"auto", "torch", "reference", "triton"}."""

    def __init__(self, *args, backend: str = AUTO, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)
