"""n-gram heads (Akyürek et al., 2024): a hard-wired attention that averages the hidden states found right after
earlier occurrences of the current n-gram, usable as the mixer of any block (`SeqConfig.ngram_layers`).

For order n, position i (its suffix ``s_i = (x_{i-n+1}, ..., x_i)``) attends with equal weights to every earlier
position j < i whose preceding n-gram ``(x_{j-n}, ..., x_{j-1})`` equals ``s_i``, and to nothing else:

    NGH(h)_i = T0(mean_{j in match(i)} h_j) + T1(h_i)        (the first term is 0 when nothing matches)

so the first term is the in-context distribution of what followed the current n-gram. "Earlier" counts real tokens
of the same sequence only: padding is skipped and a packed sequence never sees another.

The step form is the paper's hash map: a table with one entry per distinct n-gram seen so far, holding the sum of
the hidden states that followed it and their count. A token first looks up its own suffix, then adds its hidden
state under the n-gram that precedes it. The table is the layer's cache state, so it grows with the number of
distinct n-grams (not O(1) per token, unlike a recurrent layer) and is reordered by beam search like any state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache

from .cache import read_growing_state, write_growing_state
from .sequences import compute_dtype


class NGramHead(nn.Module):
    """hidden `[B, T, D]` and input_ids `[B, T]` -> `[B, T, D]`; `match_proj` is T0, `skip_proj` is T1 (with bias).

    Cache state: one tensor `[B, 1 + E, n + 1 + D]` in the compute dtype. Row 0 holds the last n real token ids
    (oldest first) in its first n columns and the number of tokens seen so far in column n; rows 1..E are the
    table entries `[key ids (n), count, sum of hidden states (D)]`, with count 0 (and key -1) where a batch row has
    fewer entries than the longest.
    """

    needs_input_ids = True

    def __init__(self, config, layer_idx: int, order: int):
        super().__init__()
        self.layer_idx, self.order = layer_idx, order
        self.match_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.skip_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """attention_mask, resets `[B, T]` bool or None (padding, packed sequence starts)."""
        if input_ids is None:
            raise ValueError(
                f"block {self.layer_idx} is an n-gram head (config.ngram_layers), which matches token ids: "
                "pass input_ids, not inputs_embeds"
            )
        batch, steps, width = hidden.shape
        dtype = compute_dtype(hidden.dtype)
        real = attention_mask
        if real is None:
            real = torch.ones(batch, steps, dtype=torch.bool, device=hidden.device)
        starts = torch.zeros_like(real) if resets is None else resets & real
        state = read_growing_state(cache, self.layer_idx)
        if state is None:
            state = hidden.new_zeros(batch, 1, self.order + 1 + width, dtype=dtype)
            state[:, 0, : self.order] = -1
        state = state.to(dtype)
        keys = self._keys(input_ids, real, starts, state[:, 0])
        suffix, suffix_ok, preceding, preceding_ok, sequence = keys
        values = torch.where(real[..., None], hidden, 0).to(dtype)  # selected: NaN x 0 would leak from padding

        # matches among the current tokens: j < i in the same sequence, preceding n-gram of j == suffix of i
        inside = torch.ones(steps, steps, dtype=torch.bool, device=hidden.device).tril(-1)
        inside = inside & suffix_ok[:, :, None] & preceding_ok[:, None, :]
        inside = inside & (sequence[:, :, None] == sequence[:, None, :])
        for r in range(self.order):
            inside = inside & (suffix[:, :, None, r] == preceding[:, None, :, r])
        total = inside.to(dtype) @ values
        count = inside.sum(-1).to(dtype)

        # matches in the table (tokens of earlier calls), for the tokens that continue the cached sequence
        table_keys, table_counts, table_sums = self._table(state)
        in_table = (suffix[:, :, None, :] == table_keys[:, None]).all(-1) & (table_counts > 0)[:, None]
        in_table = (in_table & (suffix_ok & (sequence == 0))[..., None]).to(dtype)
        total = total + in_table @ table_sums
        count = count + (in_table @ table_counts[..., None])[..., 0]
        mean = torch.where(count[..., None] > 0, total / count.clamp_min(1)[..., None], 0)
        out = self.match_proj(mean.to(hidden.dtype)) + self.skip_proj(hidden)

        if cache is not None:
            update = self._stepped if steps == 1 and resets is None else self._updated
            write_growing_state(cache, self.layer_idx, update(state, keys, real, values))
        return out

    def _table(self, state):
        """`(keys [B, E, n] long, counts [B, E], sums [B, E, D])` of a state tensor."""
        n = self.order
        return state[:, 1:, :n].long(), state[:, 1:, n], state[:, 1:, n + 1 :]

    def _keys(self, input_ids, real, starts, history):
        """For every current token: its suffix n-gram and the n-gram preceding it (`[B, T, n]` ids, oldest first),
        whether each is complete within its sequence (`[B, T]` bool, False at padding), and its sequence number in
        the row (`[B, T]`; 0 = the sequence the cached state belongs to)."""
        batch, steps = input_ids.shape
        n, device = self.order, input_ids.device
        seen = history[:, n].long().clamp(max=n)
        # the last n real ids of the history, then the current tokens: [B, n + T]
        ids = torch.cat([history[:, :n].long(), input_ids.long()], dim=1)
        is_real = torch.cat([torch.arange(n, device=device) >= n - seen[:, None], real], dim=1)
        sequence = torch.cat([torch.zeros(batch, n, dtype=torch.long, device=device), starts.long().cumsum(1)], dim=1)
        rank = is_real.long().cumsum(1) - 1  # index of each real token among the row's real tokens
        columns = torch.arange(n + steps, device=device).expand(batch, -1)
        by_rank = torch.zeros(batch, n + steps + 1, dtype=torch.long, device=device)  # last column: padding's dump
        by_rank.scatter_(1, torch.where(is_real, rank, n + steps), columns)

        def lagged(lag: int):
            """The id `lag` real tokens before each current token, and whether it exists in the same sequence."""
            source_rank = rank[:, n:] - lag
            column = by_rank.gather(1, source_rank.clamp_min(0))
            exists = (source_rank >= 0) & (sequence.gather(1, column) == sequence[:, n:])
            return ids.gather(1, column), exists

        lags = [lagged(lag) for lag in range(n + 1)]  # lag 0: the token itself
        suffix = torch.stack([lags[lag][0] for lag in range(n - 1, -1, -1)], dim=-1)
        preceding = torch.stack([lags[lag][0] for lag in range(n, 0, -1)], dim=-1)
        return suffix, lags[n - 1][1] & real, preceding, lags[n][1] & real, sequence[:, n:]

    def _stepped(self, state, keys, real, values):
        """`_updated` for one token per row (decoding), in place of a rebuild: the token's hidden state joins the
        entry of its preceding n-gram, or the first free slot (a new column when a row has none)."""
        n = self.order
        _, _, preceding, preceding_ok, _ = keys
        table_keys, table_counts, _ = self._table(state)
        insert = preceding_ok[:, 0]
        match = (table_keys == preceding[:, :1]).all(-1) & (table_counts > 0)
        free = table_counts == 0
        if bool((insert & ~match.any(1) & ~free.any(1)).any()) or state.shape[1] == 1:
            column = state.new_zeros(state.shape[0], 1, state.shape[-1])
            column[..., :n] = -1
            state, match, free = torch.cat([state, column], 1), F.pad(match, (0, 1)), F.pad(free, (0, 1), value=True)
        else:
            state = state.clone()
        # the matching entry, else the first free one (argmax of a bool row: its first True)
        slot = torch.where(match.any(1), match.float().argmax(1), free.float().argmax(1))
        rows = torch.arange(state.shape[0], device=state.device)[insert]
        entry = state[rows, 1 + slot[insert]]
        entry[:, :n] = preceding[insert, 0].to(state.dtype)
        entry[:, n] += 1
        entry[:, n + 1 :] += values[insert, 0]
        state[rows, 1 + slot[insert]] = entry
        token = real[:, 0]
        recent = torch.cat([state[:, 0, 1:n], keys[0][:, 0, -1:].to(state.dtype)], 1)  # shift in the token's id
        state[:, 0, :n] = torch.where(token[:, None], recent, state[:, 0, :n])
        state[:, 0, n] += token.to(state.dtype)
        return state

    def _updated(self, state, keys, real, values):
        """The state after the current tokens: the table with every real token of the row's last sequence added
        under its preceding n-gram (a row whose tokens start a new sequence starts a new table), and the history
        row (last n real ids, tokens seen)."""
        n = self.order
        suffix, _, preceding, preceding_ok, sequence = keys
        last = sequence == sequence.amax(1, keepdim=True)
        continues = sequence.amax(1) == 0
        table_keys, table_counts, table_sums = self._table(state)
        rows = []
        for b in range(state.shape[0]):
            kept = (table_counts[b] > 0) & continues[b]
            added = preceding_ok[b] & last[b]
            keys_b = torch.cat([table_keys[b][kept], preceding[b][added]])
            unique, inverse = torch.unique(keys_b, dim=0, return_inverse=True)
            counts = torch.cat([table_counts[b][kept], table_counts.new_ones(int(added.sum()))])
            sums = torch.cat([table_sums[b][kept], values[b][added]])
            merged_counts = counts.new_zeros(len(unique)).index_add(0, inverse, counts)
            merged_sums = sums.new_zeros(len(unique), sums.shape[-1]).index_add(0, inverse, sums)
            rows.append(torch.cat([unique.to(state.dtype), merged_counts[:, None], merged_sums], dim=1))
        new = state.new_zeros(state.shape[0], 1 + max(len(row) for row in rows), state.shape[-1])
        new[:, :, :n] = -1
        for b, row in enumerate(rows):
            new[b, 1 : 1 + len(row)] = row
        seen = torch.where(continues, state[:, 0, n], 0) + (real & last).sum(1).to(state.dtype)
        new[:, 0, n] = seen
        # the last real token's suffix holds the last n ids; ids before the sequence's start stay -1
        last_real = torch.where(real & last, torch.arange(real.shape[1], device=real.device), -1).amax(1)
        recent = suffix[torch.arange(len(suffix)), last_real.clamp_min(0)].to(state.dtype)
        recent = torch.where(torch.arange(n, device=real.device) >= n - seen.clamp(max=n)[:, None], recent, -1)
        new[:, 0, :n] = torch.where((last_real >= 0)[:, None], recent, state[:, 0, :n])
        return new
