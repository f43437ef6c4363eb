"""Peer backend: mlstm_kernels' pure-PyTorch chunkwise kernel (`chunkwise--native_autograd`, PyPI
`mlstm-kernels`, NXAI Community License: called, not copied), for parity checks and benchmarks.

It computes the exp-gate mLSTM with initial and final states; padding arrives folded into the gates
(igate = -inf, fgate = +inf), which it handles. It refuses the sigmoid input gate (the peer's
sigmoid-gate torch kernel is parallel-only, without states) and a T longer than the chunk size that
the chunk size does not divide.
"""
from __future__ import annotations

from hf_seqplugins.backends import BackendUnavailableError


def unsupported_reason(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size):
    """None when the peer computes these (validated) inputs, else why not."""
    if input_gate != "exp":
        return (
            f"mlstm_kernels has no stateful torch kernel for input_gate={input_gate!r} (its sigmoid-gate "
            "kernel is parallel-only, without initial or final state); use backend 'torch'"
        )
    steps = q.shape[2]
    if steps > chunk_size and steps % chunk_size:
        return f"mlstm_kernels' chunkwise kernel needs T ({steps}) to be a multiple of chunk_size ({chunk_size}); pick a chunk_size that divides T or use backend 'torch'"
    return None


def mlstm(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size):
    """See `hf_seqplugins.kernels.mlstm`; refuses what `unsupported_reason` names."""
    try:  # optional peer; a `try` also keeps it out of exported remote code's requirements
        from mlstm_kernels.torch.chunkwise.native import mlstm_chunkwise__native_autograd
    except ImportError as error:
        raise BackendUnavailableError("the peer library `mlstm_kernels` is not installed (pip install mlstm-kernels)") from error

    reason = unsupported_reason(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size)
    if reason is not None:
        raise BackendUnavailableError(reason)
    dtype = igate.dtype
    c, n, m = (None, None, None) if initial_state is None else (*initial_state[:2], initial_state[2][..., None])
    h, (c, n, m) = mlstm_chunkwise__native_autograd(
        q.to(dtype), k.to(dtype), v.to(dtype), igate, fgate, c, n, m,
        return_last_states=True, eps=eps, chunk_size=min(chunk_size, q.shape[2]),
    )
    return h, (c, n, m[..., 0])
