"""Reference backend of `dilated_conv`: the stack of causal dilated depthwise convolutions one token at a time,
each layer sliding its window of the last (K - 1) f^i + 1 inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def step(x, weight, state, dilation_factor, activation):
    """One token through all D layers. x `[B, C]`, weight `[D, C, K]`, state: D windows `[B, (K-1) f^i, C]`
    (oldest input first). Returns `(y [B, C], new state)`."""
    depth, _, taps = weight.shape
    new_state = []
    inputs = x
    for layer in range(depth):
        window = torch.cat([state[layer], inputs[:, None]], dim=1)  # [B, P + 1, C]; window[:, -1] is the input now
        dilation = dilation_factor**layer
        newest = window.shape[1] - 1
        output = sum(weight[layer, :, j] * window[:, newest - j * dilation] for j in range(taps))
        new_state.append(window[:, 1:])
        if activation == "gelu" and layer < depth - 1:
            output = F.gelu(output)
        inputs = output
    return inputs, tuple(new_state)


def dilated_conv(x, weight, initial_state, mask, dilation_factor, activation, resets=None):
    """See `hf_seqplugins.kernels.dilated_conv` for the contract (inputs arrive validated)."""
    state = initial_state
    outputs = []
    for t, x_t in enumerate(x.unbind(1)):
        if resets is not None:
            state = tuple(torch.where(resets[:, t, None, None], 0, s) for s in state)
        output, new_state = step(x_t, weight, state, dilation_factor, activation)
        if mask is not None:
            keep = mask[:, t]
            new_state = tuple(torch.where(keep[:, None, None], n, o) for n, o in zip(new_state, state))
            output = torch.where(keep[:, None], output, 0)
        state = new_state
        outputs.append(output)
    return torch.stack(outputs, dim=1), state
