"""Recurrent state in transformers' own cache.

Models keep no state on modules: each block's state tuple lives in the `LinearAttentionLayer` that
`DynamicCache(config=...)` builds for every `"linear_attention"` entry of `config.layer_types`, so
`generate()`, beam-search reordering (`reorder_cache`, batch dimension first) and offloading work
unmodified. A state tuple is packed as one tensor `[B, S, ...]` along dimension 1.
"""
from __future__ import annotations

import torch
from transformers import Cache


def read_state(cache: Cache | None, layer_idx: int) -> tuple[torch.Tensor, ...] | None:
    """The state tuple stored for `layer_idx`, or None before the first write (prefill)."""
    if cache is None:
        return None
    packed = cache.get_recurrent_state(layer_idx)
    return None if packed is None else tuple(packed.unbind(1))


def write_state(cache: Cache | None, layer_idx: int, state: tuple[torch.Tensor, ...]) -> None:
    """Store the final state tuple of `layer_idx` (every tensor `[B, ...]` of one shape)."""
    if cache is None:
        return
    cache.update_recurrent_state(torch.stack([s.detach() for s in state], dim=1), layer_idx)
    # update_recurrent_state() leaves has_previous_state unset (only update_conv_state sets it);
    # without this the stored state would never be read back.
    cache.layers[layer_idx].has_previous_state[0] = True
