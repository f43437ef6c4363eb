"""Peer backend "transformers": transformers' pure-PyTorch chunked scan `mamba2_chunk_scan`
(`transformers.models.mamba2.modeling_mamba2`, 5.x).

That function takes a per-head A and multiplies it by Δ inside; it only multiplies elementwise, so
passing Δ = 1, A = log_decay `[Bt, T, H]` and x·Δ as the input computes exactly our operator. We call
the undecorated torch function (`inspect.unwrap`): the decorated one may dispatch to mamba_ssm's
Triton kernel, which needs A `[H]`. It computes in float32 whatever the input dtype, so float64
inputs are refused rather than silently rounded.
"""

from __future__ import annotations

import inspect

import torch


def _chunk_scan():
    from transformers.models.mamba2 import modeling_mamba2

    return inspect.unwrap(modeling_mamba2.mamba2_chunk_scan)


def unavailable_reason() -> str | None:
    """None when this transformers exposes `mamba2_chunk_scan`, else why not."""
    try:
        _chunk_scan()
    except (ImportError, AttributeError) as error:
        return f"this transformers has no pure-torch `mamba2_chunk_scan` in models.mamba2.modeling_mamba2 ({error})"
    return None


def unsupported_reason(x, dt, log_decay, B, C, initial_state, mask, chunk_size) -> str | None:
    if x.dtype == torch.float64:
        return "transformers' mamba2_chunk_scan computes in float32; float64 inputs would lose precision (use 'torch')"
    return None


def ssd(x, dt, log_decay, B, C, initial_state, mask, chunk_size):
    """See `hf_seqplugins.kernels.ssd` for the contract (inputs arrive validated, mask folded in)."""
    y, state = _chunk_scan()(
        x.float() * dt.float()[..., None],
        torch.ones_like(dt, dtype=torch.float32),
        log_decay.float(),
        B,
        C,
        min(chunk_size, x.shape[1]),
        initial_states=initial_state,
        return_final_states=True,
    )
    return y, state.to(dt.dtype)
