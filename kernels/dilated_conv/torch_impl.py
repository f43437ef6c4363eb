"""Torch backend of `dilated_conv`: one `F.conv1d` per layer (dilation f^i, groups = C) over the layer's window
state followed by its inputs, so no left zero padding is needed beyond what the state holds.

With a padding mask the real tokens of every row are first moved to the front (stable order: row b's n_b real
tokens at slots 0 .. n_b - 1, zeros after), each layer then runs on ``[window state, compacted inputs]``, the new
window of a layer is the P_i inputs that end at slot n_b (a per-row gather), and the outputs go back to the
real tokens' positions (0 at padding). A causal convolution never lets the zeros after slot n_b reach an earlier
slot, so this equals skipping the padded steps, whatever their place in the row.

`run_stack` is the driver shared with the Triton backend, which gives its own per-layer function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["conv_layer", "dilated_conv", "run_stack"]


def conv_layer(window, inputs, weight, dilation, gelu):
    """One layer. window `[B, P, C]` (P = (K - 1) * dilation), inputs `[B, T, C]`, weight `[C, K]` (tap j weighs
    the input j * dilation steps back). Returns `[B, T, C]`, GELU applied when `gelu`."""
    channels, taps = weight.shape
    extended = torch.cat([window.transpose(1, 2), inputs.transpose(1, 2)], dim=2)  # [B, C, P + T], contiguous
    output = F.conv1d(extended, weight.flip(-1)[:, None, :], dilation=dilation, groups=channels).transpose(1, 2)
    return F.gelu(output) if gelu else output


def run_stack(x, weight, initial_state, mask, dilation_factor, activation, layer=conv_layer):
    """The D layers with `layer(window, inputs, weight [C, K], dilation, gelu) -> outputs` as the convolution;
    see the module docstring. Returns `(y [B, T, C], D windows [B, P_i, C])`."""
    batch, steps, _ = x.shape
    depth = weight.shape[0]
    if mask is not None:
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
        counts = mask.sum(1)
        slots = torch.arange(steps, device=x.device)
        inputs = torch.gather(x, 1, order[..., None].expand_as(x))
        inputs = torch.where((slots < counts[:, None])[..., None], inputs, 0)
    else:
        inputs = x
    state = []
    for i in range(depth):
        window = initial_state[i]
        span = window.shape[1]
        extended = torch.cat([window, inputs], dim=1)
        if mask is None:
            state.append(extended[:, steps:])
        else:
            ends = (counts[:, None] + torch.arange(span, device=x.device))[..., None].expand(batch, span, x.shape[2])
            state.append(torch.gather(extended, 1, ends))
        inputs = layer(window, inputs, weight[i], dilation_factor**i, activation == "gelu" and i < depth - 1)
    if mask is None:
        return inputs, tuple(state)
    outputs = torch.gather(inputs, 1, torch.argsort(order, dim=1)[..., None].expand_as(inputs))
    return torch.where(mask[..., None], outputs, 0), tuple(state)


def dilated_conv(x, weight, initial_state, mask, dilation_factor, activation):
    """See `hf_seqplugins.kernels.dilated_conv` for the contract (inputs arrive validated)."""
    return run_stack(x, weight, initial_state, mask, dilation_factor, activation)
