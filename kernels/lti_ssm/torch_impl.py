"""Convolution mode : the SSM kernel, then one FFT convolution, plus the response to an
initial state and the final state in closed form; kernels from the plain-PyTorch generators.

The FFT length is 2T >= 2T - 1, so the circular convolution never wraps. Padding arrives as zero inputs, and
the operator only sends padding where the held state is zero anyway (left padding, no initial state).
"""

from __future__ import annotations

import torch

from .generators import TORCH_GENERATORS, Generators


def convolve(u, system, initial_state, return_final_state, generators: Generators):
    """u `[Bt, T, H]` -> (y `[Bt, T, M, H]`, final state or None) with `generators` making the kernel."""
    steps = u.shape[1]
    kernel = system.kernel(steps, generators)
    size = 2 * steps
    spectrum = torch.fft.rfft(u.transpose(1, 2)[:, None], n=size) * torch.fft.rfft(kernel, n=size)
    y = torch.fft.irfft(spectrum, n=size)[..., :steps].permute(0, 3, 1, 2)
    if initial_state is not None:
        y = y + system.free_response(initial_state, steps, generators)
    final = system.final_state(u, initial_state) if return_final_state else None
    return y, final


def lti_ssm(u, system, initial_state, mask, return_final_state):
    """See `hf_seqplugins.kernels.lti_ssm` for the contract (inputs arrive validated, mask folded in)."""
    return convolve(u, system, initial_state, return_final_state, TORCH_GENERATORS)
