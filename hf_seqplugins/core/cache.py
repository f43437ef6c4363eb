"""Recurrent state in transformers' own cache.

Models keep no state on modules: each block's state tuple lives in the `LinearAttentionLayer` that
`DynamicCache(config=...)` builds for every `"linear_attention"` entry of `config.layer_types`, so
`generate()`, beam-search reordering (`reorder_cache`, batch dimension first) and offloading work
unmodified. A state tuple is packed as one tensor with the batch first: tensors of one shape are
stacked along dimension 1 (`[B, S, ...]`); tensors of different shapes (e.g. mLSTM's `C`, `n`, `m`)
are flattened and concatenated (`[B, total]`), and the reader passes their shapes to unpack them.
"""

from __future__ import annotations

import math

import torch
from transformers import Cache


def read_state(
    cache: Cache | None, layer_idx: int, shapes: list[tuple[int, ...]] | None = None
) -> tuple[torch.Tensor, ...] | None:
    """The state tuple stored for `layer_idx`, or None before the first write (prefill).

    `shapes`: the per-row shapes (batch left out) of a tuple whose tensors differ in shape; None for a
    tuple of one shape."""
    if cache is None:
        return None
    packed = cache.get_recurrent_state(layer_idx)
    if packed is None:
        return None
    if shapes is None:
        return tuple(packed.unbind(1))
    sizes = [math.prod(shape) for shape in shapes]
    return tuple(part.reshape(packed.shape[0], *shape) for part, shape in zip(packed.split(sizes, dim=1), shapes))


def write_state(cache: Cache | None, layer_idx: int, state: tuple[torch.Tensor, ...]) -> None:
    """Store the final state tuple of `layer_idx` (tensors `[B, ...]`; see the module docstring for the packing)."""
    if cache is None:
        return
    state = [s.detach() for s in state]
    if len({s.shape for s in state}) == 1:
        packed = torch.stack(state, dim=1)
    else:
        packed = torch.cat([s.reshape(s.shape[0], -1) for s in state], dim=1)
    cache.update_recurrent_state(packed, layer_idx)
    # update_recurrent_state() leaves has_previous_state unset (only update_conv_state sets it);
    # without this the stored state would never be read back.
    cache.layers[layer_idx].has_previous_state[0] = True


def cached_batch_size(cache: Cache | None) -> int | None:
    """The batch size of the states held in `cache` (recurrent, convolution or attention), None while it is empty."""
    for layer in [] if cache is None else cache.layers:
        for states in (getattr(layer, "recurrent_states", {}), getattr(layer, "conv_states", {})):
            for state in states.values():
                if isinstance(state, torch.Tensor):
                    return state.shape[0]
        keys = getattr(layer, "keys", None)
        if getattr(layer, "is_initialized", False) and isinstance(keys, torch.Tensor) and keys.numel():
            return keys.shape[0]
    return None


def read_growing_state(cache: Cache | None, layer_idx: int) -> torch.Tensor | None:
    """The state tensor `[B, ...]` stored by `write_growing_state` for `layer_idx`, or None before the first write."""
    return None if cache is None else cache.get_recurrent_state(layer_idx)


def write_growing_state(cache: Cache | None, layer_idx: int, state: torch.Tensor) -> None:
    """Store a state tensor `[B, ...]` whose size may change from call to call (an n-gram table).

    `update_recurrent_state` copies into the buffer made at the first write, so it keeps one shape: the tensor is
    assigned instead. Beam-search reordering, offloading and `reset` handle it like any recurrent state."""
    if cache is None:
        return
    layer = cache.layers[layer_idx]
    layer.recurrent_states[0] = state.detach()
    layer.is_recurrent_states_initialized[0] = True
    layer.has_previous_state[0] = True
