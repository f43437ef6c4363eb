"""Peer backend: FlashRNN's pure-PyTorch `vanilla` kernels (PyPI `flashrnn`), for parity and benchmarks.

FlashRNN takes the same `[B, T, G, NH, DH]` gate inputs and `[G, NH, DH, DR]` recurrent weights;
its GRU orders the recurrent gates `[n, r, z]` and takes four biases `[b_hn, b_r, b_z, b_in]`.
"""

from __future__ import annotations

import torch

from hf_seqplugins import BackendUnavailableError

_FUNCTION = {"elman_tanh": "elman", "lstm": "lstm", "gru": "gru", "slstm": "slstm"}
_DTYPE = {torch.float32: "float32", torch.float64: "float64"}


def unsupported_reason(
    cell, gates_x, recurrent_weight, recurrent_bias, initial_state, mask, projection, normalizer_clamp
):
    """None when FlashRNN computes these (validated) inputs, else why not."""
    if cell not in _FUNCTION:
        return f"flashrnn has no {cell!r} cell (it offers {sorted(_FUNCTION)})"
    if mask is not None:
        return "flashrnn cannot skip padding positions; use backend 'torch' for padded batches"
    if projection is not None:
        return "flashrnn has no LSTM projection (proj_size); use backend 'torch'"
    if cell == "slstm" and not normalizer_clamp:
        return "flashrnn always clamps the sLSTM normalizer; use backend 'torch' for slstm_normalizer_clamp=False"
    if gates_x.dtype not in _DTYPE:
        return f"flashrnn's vanilla kernels compute in {sorted(str(d) for d in _DTYPE)}, got {gates_x.dtype}"
    return None


def headwise_rnn(cell, gates_x, recurrent_weight, recurrent_bias, initial_state, mask, projection, normalizer_clamp):
    """See `hf_seqplugins.kernels.rnn.headwise_rnn`; refuses what FlashRNN does not compute."""
    try:  # optional peer; a `try` also keeps it out of exported remote code's requirements
        from flashrnn import flashrnn
    except ImportError as error:
        raise BackendUnavailableError(
            "the peer library `flashrnn` is not installed (pip install 'hf-seqplugins[peers]')"
        ) from error

    reason = unsupported_reason(
        cell, gates_x, recurrent_weight, recurrent_bias, initial_state, mask, projection, normalizer_clamp
    )
    if reason is not None:
        raise BackendUnavailableError(f"backend 'flashrnn' for 'headwise_rnn' cannot run these inputs: {reason}")
    gates, heads, head_dim = recurrent_weight.shape[:3]
    bias = recurrent_bias if recurrent_bias is not None else recurrent_weight.new_zeros(gates, heads, head_dim)
    weight = recurrent_weight
    if cell == "gru":
        weight = recurrent_weight[[2, 0, 1]]
        bias = torch.cat([bias[[2, 0, 1]], bias.new_zeros(1, heads, head_dim)])
    states = torch.stack(initial_state).unsqueeze(2)
    outputs, last = flashrnn(
        gates_x, weight, bias, states=states, function=_FUNCTION[cell], backend="vanilla", dtype=_DTYPE[gates_x.dtype]
    )
    return outputs[0], tuple(last[:, :, 0])
