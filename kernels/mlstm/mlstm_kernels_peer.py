"""Peer backend: mlstm_kernels' pure-PyTorch chunkwise kernel (`chunkwise--native_autograd`, PyPI
`mlstm-kernels`, NXAI Community License: called, not copied), for parity checks and benchmarks.

It computes the exp-gate mLSTM with initial and final states; padding arrives folded into the gates
(igate = -inf, fgate = +inf), which it handles. Its chunkwise kernel needs T to be a multiple of the
chunk size: the sequence is extended at the end with identity steps of the same kind, which leave the
final state exact. It refuses the sigmoid input gate (the peer's sigmoid-gate torch kernel is
parallel-only, without states).
"""

from __future__ import annotations

import math

import torch.nn.functional as F

from hf_seqplugins import BackendUnavailableError


def unsupported_reason(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size):
    """None when the peer computes these (validated) inputs, else why not."""
    if input_gate != "exp":
        return (
            f"mlstm_kernels has no stateful torch kernel for input_gate={input_gate!r} (its sigmoid-gate "
            "kernel is parallel-only, without initial or final state); use backend 'torch'"
        )
    return None


def mlstm(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size):
    """See `hf_seqplugins.kernels.mlstm`; refuses what `unsupported_reason` names."""
    try:  # optional peer; a `try` also keeps it out of exported remote code's requirements
        from mlstm_kernels.torch.chunkwise.native import mlstm_chunkwise__native_autograd
    except ImportError as error:
        raise BackendUnavailableError(
            "the peer library `mlstm_kernels` is not installed (pip install mlstm-kernels)"
        ) from error

    reason = unsupported_reason(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size)
    if reason is not None:
        raise BackendUnavailableError(reason)
    dtype = igate.dtype
    steps = q.shape[2]
    length = min(chunk_size, steps)
    pad = -steps % length
    q, k, v = (F.pad(t.to(dtype), (0, 0, 0, pad)) for t in (q, k, v))
    igate = F.pad(igate, (0, pad), value=-math.inf)
    fgate = F.pad(fgate, (0, pad), value=math.inf)
    c, n, m = (None, None, None) if initial_state is None else (*initial_state[:2], initial_state[2][..., None])
    h, (c, n, m) = mlstm_chunkwise__native_autograd(
        q, k, v, igate, fgate, c, n, m, return_last_states=True, eps=eps, chunk_size=length
    )
    return h[:, :, :steps], (c, n, m[..., 0])
