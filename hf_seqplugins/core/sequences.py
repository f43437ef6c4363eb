"""Padding and sequence boundaries: the one rule every operator and mixer follows, and its shared helpers.

Two per-token masks describe a batch `[B, T]` to an operator:

- `mask` (bool, False = padding): a padded step is an identity step. The recurrent state passes through
  unchanged, nothing is read from the padded inputs (whatever values they hold, NaN included), and the output
  there is unspecified (callers ignore it). So a left-padded row gives, at its real positions, exactly the
  outputs of the row alone, and its final state is the row's.
- `resets` (bool, True = a new sequence starts here): the state is set to zeros (an operator's "no state")
  just before this step, so a row packed with several sequences (`DataCollatorWithFlattening`) gives for each
  the outputs it gives alone. The incoming `initial_state` reaches only the first sequence of a row.

`boundaries` turns what transformers' collators and `generate` send (`attention_mask`, `position_ids`
restarting at 0, `seq_idx`, `cu_seq_lens_q`) into `(mask, resets)`. `Segments` repacks a packed batch into one
row per sequence and back; `Operator` uses it for every backend that does not handle `resets` itself, and a
mixer can use it around anything else that runs along the sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

State = torch.Tensor | tuple[torch.Tensor, ...] | None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype states, gates and normalisations are computed in for inputs of `dtype`: at least float32
    (half precision is upcast, float64 stays float64, complex dtypes keep their precision)."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def boundaries(
    length: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    batch: int | None = None,
    history: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`(mask [B, length] bool | None, resets [B, length] bool | None)` for the current `length` tokens.

    attention_mask: `[B, length]`, or with `history` (a cache holds earlier tokens) also `[B, past + length]`
        over the whole history as `generate` sends it (its last `length` columns are used); 0 at padding. Any
        other shape is an error naming both.
    position_ids `[B, length]` (or `[length]`): a sequence starts where the position is 0. seq_idx `[B, length]`:
        where the index changes. cu_seq_lens_q `[S + 1]`: cumulative lengths of the sequences of a single packed
        row. Only starts preceded by a real token of the same row count (a left-padded row's first token starts
        nothing: its state is the initial one anyway). None is returned for a mask with no padding and for
        resets with no boundary, so the common case costs nothing downstream.
    """
    mask = None
    if attention_mask is not None:
        columns = attention_mask.shape[1] if attention_mask.dim() == 2 else None
        if (
            columns is None
            or columns < length
            or (columns > length and not history)
            or (batch is not None and attention_mask.shape[0] != batch)
        ):
            expected = f"[{batch if batch is not None else 'B'}, {length}]" + (
                f" or [B, past + {length}]" if history else ""
            )
            raise ValueError(f"attention_mask must be {expected}, got shape {list(attention_mask.shape)}")
        mask = attention_mask[:, -length:].bool()
    starts = None
    if position_ids is not None:
        position_ids = position_ids if position_ids.dim() == 2 else position_ids.view(1, -1)
        _check_per_token("position_ids", position_ids, length)
        starts = position_ids == 0
    if seq_idx is not None:
        _check_per_token("seq_idx", seq_idx, length)
        changed = torch.zeros_like(seq_idx, dtype=torch.bool)
        changed[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
        starts = changed if starts is None else starts | changed
    if cu_seq_lens_q is not None:
        offsets = cu_seq_lens_q.long()
        if offsets.dim() != 1 or int(offsets[-1]) != length:
            raise ValueError(
                f"cu_seq_lens_q must be [S + 1] cumulative lengths ending at {length}, got {offsets.tolist()}"
            )
        from_lengths = torch.zeros(1, length, dtype=torch.bool, device=offsets.device)
        from_lengths[0, offsets[:-1]] = True
        starts = from_lengths if starts is None else starts | from_lengths
    resets = None
    if starts is not None:
        real = torch.ones_like(starts) if mask is None else mask.expand_as(starts)
        seen_real = (real.cumsum(1) - real.long()) > 0  # a real token earlier in the row
        resets = starts & seen_real & real
        if not bool(resets.any()):
            resets = None
    if mask is not None and bool(mask.all()):
        mask = None
    if resets is not None and batch is not None and resets.shape[0] != batch:
        resets = resets.expand(batch, -1)
    return mask, resets


def _check_per_token(name: str, value: torch.Tensor, length: int) -> None:
    if value.dim() != 2 or value.shape[1] != length:
        raise ValueError(f"{name} must be [B, {length}] (one entry per current token), got shape {list(value.shape)}")


@dataclass
class Segments:
    """A packed batch `[B, T]` split at `resets` into one row per sequence, each right-aligned (left-padded) in a
    batch `[S, L]` (L = the longest sequence), and the way back.

    Build it with `Segments.of(resets, mask)`; `pack` gathers per-token tensors `[B, T, ...]` into `[S, L, ...]`,
    `unpack` scatters `[S, L, ...]` back, `initial_state` gives each row's incoming state to its first sequence
    (zeros to the others), `final_state` takes each row's state from its last sequence.
    """

    batch: int
    length: int
    index: torch.Tensor  # [S, L] flat positions b * T + t (clamped where `valid` is False)
    valid: torch.Tensor  # [S, L] bool, False where a sequence is left-padded
    mask: torch.Tensor  # [S, L] bool: valid and real in the original mask
    inverse: torch.Tensor  # [B * T] flat position s * L + l of every original token
    row: torch.Tensor  # [S] the original row of each sequence
    first: torch.Tensor  # [S] bool: the first sequence of its row
    last: torch.Tensor  # [B] the last sequence of each row

    @classmethod
    def of(cls, resets: torch.Tensor, mask: torch.Tensor | None = None) -> Segments:
        batch, length = resets.shape
        device = resets.device
        starts = resets.clone()
        starts[:, 0] = True
        segment = starts.flatten().long().cumsum(0) - 1  # [B*T] sequence id of every token
        count = int(segment[-1]) + 1
        sizes = torch.bincount(segment, minlength=count)
        longest = int(sizes.max())
        flat = torch.arange(batch * length, device=device)
        begin = torch.zeros(count, dtype=torch.long, device=device)
        begin[1:] = sizes.cumsum(0)[:-1]
        # right-aligned: sequence s occupies columns longest - size .. longest - 1
        column = flat - begin[segment] + (longest - sizes[segment])
        index = torch.zeros(count, longest, dtype=torch.long, device=device)
        valid = torch.zeros(count, longest, dtype=torch.bool, device=device)
        index[segment, column] = flat
        valid[segment, column] = True
        original = torch.ones(batch * length, dtype=torch.bool, device=device) if mask is None else mask.flatten()
        row = segment.new_empty(count)
        row[segment] = flat // length
        first = starts.flatten()[begin] & (begin % length == 0)
        last = segment.view(batch, length)[:, -1]
        return cls(batch, length, index, valid, valid & original[index], segment * longest + column, row, first, last)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """`[B, T, ...]` -> `[S, L, ...]` (zeros where a sequence is padded)."""
        flat = tensor.reshape(self.batch * self.length, *tensor.shape[2:])
        packed = flat[self.index]
        keep = self.valid.view(*self.valid.shape, *([1] * (tensor.dim() - 2)))
        return torch.where(keep, packed, torch.zeros((), dtype=tensor.dtype, device=tensor.device))

    def unpack(self, tensor: torch.Tensor) -> torch.Tensor:
        """`[S, L, ...]` -> `[B, T, ...]`."""
        flat = tensor.reshape(-1, *tensor.shape[2:])
        return flat[self.inverse].view(self.batch, self.length, *tensor.shape[2:])

    def initial_state(self, state: State) -> State:
        """Each row's state `[B, ...]` (or a tuple of them) for its first sequence, zeros for the others; None stays
        None."""
        if state is None:
            return None
        if isinstance(state, (tuple, list)):
            return type(state)(self.initial_state(s) for s in state)
        gathered = state[self.row]
        keep = self.first.view(-1, *([1] * (state.dim() - 1)))
        return torch.where(keep, gathered, torch.zeros((), dtype=state.dtype, device=state.device))

    def final_state(self, state: State) -> State:
        """`[S, ...]` (or a tuple) -> each row's state after its last sequence `[B, ...]`."""
        if state is None:
            return None
        if isinstance(state, (tuple, list)):
            return type(state)(self.final_state(s) for s in state)
        return state[self.last]


def run_by_segments(
    function: Callable[..., tuple[torch.Tensor, State]],
    sequences: Sequence[torch.Tensor],
    resets: torch.Tensor,
    mask: torch.Tensor | None = None,
    initial_state: State = None,
    **options,
) -> tuple[torch.Tensor, State]:
    """Run ``function(*sequences, initial_state=..., mask=..., **options) -> (y [B, T, ...], final_state)`` with
    every packed sequence in a row of its own, and return `y` and the final state in the packed layout."""
    segments = Segments.of(resets, mask)
    y, state = function(
        *(segments.pack(s) for s in sequences),
        initial_state=segments.initial_state(initial_state),
        mask=segments.mask,
        **options,
    )
    return segments.unpack(y), segments.final_state(state)
