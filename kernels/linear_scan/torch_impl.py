"""Log-depth parallel scan (Hillis-Steele doubling, specs/RNN.md 3.2): ceil(log2 T) rounds, each composing every
step's affine map `s -> a s + b` with the one `2^k` steps earlier, vectorised over the whole sequence.

The initial state enters as the offset of the first step (`b_1 += a_1 s_0`). O(T log T) work, differentiable by
autograd; on a CPU it beats the step loop by avoiding T Python iterations.
"""
from __future__ import annotations

import torch

from .reference import apply


def linear_scan(a, b, initial_state, blocks):
    """See `hf_seqplugins.kernels.linear_scan` for the contract (inputs arrive validated)."""
    if initial_state is not None:
        b = torch.cat([b[:, :1] + apply(a[:, 0], initial_state, blocks)[:, None], b[:, 1:]], dim=1)
    steps = a.shape[1]
    shift = 1
    while shift < steps:
        # step t absorbs step t - shift: (a_t, b_t) o (a_s, b_s) = (a_t a_s, a_t b_s + b_t)
        earlier_a, earlier_b = a[:, :-shift], b[:, :-shift]
        later_a, later_b = a[:, shift:], b[:, shift:]
        b = torch.cat([b[:, :shift], apply(later_a, earlier_b, blocks) + later_b], dim=1)
        a = torch.cat([a[:, :shift], later_a @ earlier_a if blocks else later_a * earlier_a], dim=1)
        shift *= 2
    return b, b[:, -1]
