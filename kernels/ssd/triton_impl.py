"""Triton backend of the SSD operator (Mamba-2), in mamba_ssm's five-step decomposition (`docs/architectures/mamba2.md`,
section 'Triton backend').

Recurrence per head: `h_t = exp(a_t) h_{t-1} + dt_t x_t B_t^T`, `y_t = h_t C_t` (state `[P, N]`).
The sequence is cut into chunks of `L` steps and every chunk again into blocks of `BT` steps.
Within chunk c (local steps i, j), with `X_j = dt_j x_j`:

- chunk cumsum (torch prepass on `[Bt * H, T]`): in-chunk prefix `cum_i = sum_{r<=i} a_r`, suffix
  `suf_j = sum_{r>j} a_r`, chunk total `tot_c`, and the same prefix / suffix / total per block;
- `_chunk_state_kernel`, grid (chunks, P x N tiles, Bt * H): `S_c = sum_j exp(suf_j) X_j B_j^T`;
- `_state_passing_kernel`, grid (P * N tiles, Bt * H), sequential over chunks, in place:
  `H_{c+1} = exp(tot_c) H_c + S_c` from `H_0` = the initial state; `H_NC` is the final state;
- `_scan_kernel`, grid (chunks x blocks, output tiles, Bt * H), the chunk scan with the C.B^T products of
  every block pair computed in place: `y_i = exp(cum_i) H_c C_i + sum_{j<=i} exp(seg_ij) (C_i . B_j) X_j`.

The states entering every chunk, `[Bt * H, NC + 1, P, N]`, are kept for the backward.

The in-chunk decays `seg_ij = sum_{j<r<=i} a_r` are never differences of prefix sums: on the diagonal
block they are a masked cumulative sum over the block (the segsum of `docs/architectures/mamba2.md`, section 'Chunked
SSD'), between blocks the sum `(suffix of j's block) + (totals of the blocks between) + (prefix of i's block)`. Every
term is a sum of log decays, so for `a <= 0` nothing cancels and a decay keeps its full relative accuracy.

Backward, with `dH_c` the gradient of the state entering chunk c:
`_chunk_state_kernel` again for `dS_c = sum_i exp(cum_i) dy_i C_i^T` and `_state_passing_kernel`
reversed for `dH_c = exp(tot_c) dH_{c+1} + dS_c` from `dH_NC` = the final state's gradient (`dH_0` is the
initial state's). `_scan_kernel` then gives, causal (like y) or anti-causal (sums over `i >= j` and the
state leaving the chunk, weighted `exp(suf_j)`):

- `dC_i = exp(cum_i) dy_i H_c + sum_{j<=i} exp(seg_ij) (dy_i . X_j) B_j`,
- `dX_j = exp(suf_j) B_j dH_{c+1}^T + sum_{i>=j} exp(seg_ij) (B_j . C_i) dy_i`,
- `dB_j = exp(suf_j) X_j dH_{c+1} + sum_{i>=j} exp(seg_ij) (X_j . dy_i) C_i`,

per head (a torch post-pass sums dB and dC over the heads of a group), `dx = dt dX`,
`d dt = x . dX`. The log decays enter only through the weights of (input j, output i) pairs, so
`d a_r = sum_{t>=r} (C_t . dC_t - B_t . dB_t)` over the pairs that cross r (per head, diagonal terms
cancel), i.e. `sum_{t>=r in the chunk} (dy_t . y_t - X_t . dX_t) + <dH_{c+1}, H_{c+1}>`: a reverse
cumulative sum inside each chunk plus the gradient of a scale of the state leaving it. Where a decay
is tiny the two terms nearly cancel: in float32, `d a` then carries an absolute error of about 1e-7
times those terms' size (with log decays down to -1000, 6e-6 of the largest `d a`; the float32 step
loop, which multiplies by `exp(a_t)`, does not have this error).

`tl.dot` needs every dimension >= 16: P and N are tiled by powers of two in [16, 64] ([16, 32] in float64)
with masked loads (padded columns read as 0 and are never stored), the blocks are powers of two >= 16.
The kernels read `x`, `B`, `C` in their `[Bt, T, heads, width]` layout; steps past T read as 0 and the
padded `dt`, `a` are 0 there, i.e. identity steps that leave the final state exact. Dots run with
``input_precision="ieee"`` (TF32 would lose three digits). Half-precision inputs are upcast to float32
before the kernels; float64 inputs are computed in float64.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

try:  # in a `try` so exported remote code does not list Triton as a hard requirement
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("the 'triton' backend needs Triton: pip install 'hf-seqplugins[triton]'") from error

from hf_seqplugins import BackendUnavailableError, triton_device_reason

__all__ = ["ssd", "unsupported_reason"]

# triton.jit picks the interpreter when the kernels are defined, i.e. when this module is first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MIN_DOT_SIZE = 16
MAX_HEAD_TILE = 64
MAX_INTRA_TILE = 64
# float64 tiles of 64 would stage more shared memory per program than an A100 (sm_80) has.
MAX_TILE_FLOAT64 = 32
MAX_STATE_BLOCK = 1024
MAX_GRID_YZ = 65535


@triton.jit
def _dot(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _load_rows(ptr, batch, head, rows, cols, steps, heads, width):
    """`[len(rows), len(cols)]` tile of head `head` of a contiguous `[Bt, T, heads, width]` tensor;
    rows >= T and columns >= width read as 0."""
    offsets = ((batch * steps + rows[:, None]) * heads + head) * width + cols[None, :]
    return tl.load(ptr + offsets, mask=(rows < steps)[:, None] & (cols < width)[None, :], other=0.0)


@triton.jit
def _chunk_state_kernel(
    u_ptr,
    v_ptr,
    w_ptr,
    states_ptr,
    steps,
    padded,
    chunks,
    heads,
    groups,
    dp,
    dn,
    slot_shift,
    L: tl.constexpr,
    BT: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
):
    """`states[bh, c + slot_shift] = sum_{j in chunk c} w_j u_j v_j^T` for u `[Bt, T, H, P]`,
    v `[Bt, T, G, N]`, w `[Bt * H, T']`, states `[Bt * H, NC + 1, P, N]`."""
    chunk = tl.program_id(0)
    tiles_n = tl.cdiv(dn, BN)
    offs_p = (tl.program_id(1) // tiles_n) * BP + tl.arange(0, BP)
    offs_n = (tl.program_id(1) % tiles_n) * BN + tl.arange(0, BN)
    bh = tl.program_id(2).to(tl.int64)
    batch = bh // heads
    head = bh % heads
    group = head * groups // heads
    offs_t = tl.arange(0, BT)

    acc = tl.zeros([BP, BN], dtype=states_ptr.dtype.element_ty)
    for start in range(0, L, BT):
        rows = chunk * L + start + offs_t
        weight = tl.load(w_ptr + bh * padded + rows)
        u = _load_rows(u_ptr, batch, head, rows, offs_p, steps, heads, dp) * weight[:, None]
        acc += _dot(tl.trans(u), _load_rows(v_ptr, batch, group, rows, offs_n, steps, groups, dn))
    slot = bh * (chunks + 1) + chunk + slot_shift
    valid = (offs_p < dp)[:, None] & (offs_n < dn)[None, :]
    tl.store(states_ptr + slot * dp * dn + offs_p[:, None] * dn + offs_n[None, :], acc, mask=valid)


@triton.jit
def _state_passing_kernel(states_ptr, tot_ptr, chunks, size, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """In place over states `[Bt * H, NC + 1, size]` with chunk totals tot `[Bt * H, NC]`: forward
    `slot[c + 1] += exp(tot_c) slot[c]` for c = 0, 1, ...; reverse `slot[c] += exp(tot_c) slot[c + 1]`
    for c = NC - 1, ..., 0."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    bh = tl.program_id(1).to(tl.int64)
    valid = offs < size
    base = states_ptr + bh * (chunks + 1) * size + offs
    if REVERSE:
        carry = tl.load(base + chunks * size, mask=valid)
    else:
        carry = tl.load(base, mask=valid)
    for step in range(chunks):
        if REVERSE:
            chunk = chunks - 1 - step
            slot = chunk
        else:
            chunk = step
            slot = chunk + 1
        carry = tl.exp(tl.load(tot_ptr + bh * chunks + chunk)) * carry + tl.load(base + slot * size, mask=valid)
        tl.store(base + slot * size, carry, mask=valid)


@triton.jit
def _block_pair(
    acc,
    l_ptr,
    r_ptr,
    v_ptr,
    dt_ptr,
    batch,
    l_head,
    r_head,
    v_head,
    bh,
    rows_o,
    rows_k,
    offs_o,
    log_weight,
    steps,
    padded,
    l_heads,
    r_heads,
    v_heads,
    dk,
    do,
    SCALE_KEYS: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
):
    """`acc + (exp(log_weight) * (L_o R_k^T)) V_k` for one (output block, key block) pair: `[BT, BO]`."""
    scores = tl.zeros([BT, BT], dtype=acc.dtype)
    for k0 in range(0, dk, BK):
        offs_k = k0 + tl.arange(0, BK)
        lhs = _load_rows(l_ptr, batch, l_head, rows_o, offs_k, steps, l_heads, dk)
        scores += _dot(lhs, tl.trans(_load_rows(r_ptr, batch, r_head, rows_k, offs_k, steps, r_heads, dk)))
    scores = scores * tl.exp(log_weight)
    if SCALE_KEYS:
        scores = scores * tl.load(dt_ptr + bh * padded + rows_k)[None, :]
    return acc + _dot(scores, _load_rows(v_ptr, batch, v_head, rows_k, offs_o, steps, v_heads, do))


@triton.jit
def _scan_kernel(
    l_ptr,
    r_ptr,
    v_ptr,
    state_ptr,
    out_ptr,
    a_ptr,
    pre_ptr,
    suf_ptr,
    block_tot_ptr,
    inter_ptr,
    dt_ptr,
    steps,
    padded,
    chunks,
    heads,
    l_heads,
    r_heads,
    v_heads,
    dk,
    do,
    state_stride_k,
    state_stride_o,
    REVERSE: tl.constexpr,
    SCALE_KEYS: tl.constexpr,
    SCALE_OUT: tl.constexpr,
    L: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BO: tl.constexpr,
):
    """One output block and DO tile of `out [Bt, T, H, DO]`:

    `out_o = exp(inter_o) L_o M + sum_k exp(seg) (L_o . R_k) V_k (dt_k if SCALE_KEYS)`, times dt_o if SCALE_OUT,
    over keys `k <= o` of the chunk with the state M entering it (causal), or keys `k >= o` and the state
    leaving it (REVERSE). L, R `[Bt, T, l_heads | r_heads, DK]`, V `[Bt, T, v_heads, DO]`, the state M at
    `state_ptr[(bh * (NC + 1) + slot) * DK * DO + k * state_stride_k + o * state_stride_o]`.
    Per-step `[Bt * H, T']`: a (log decays), pre / suf (in-block inclusive prefix / exclusive suffix of a),
    inter (cum or suf of the chunk), dt; block_tot `[Bt * H, T' / BT]`.
    """
    blocks: tl.constexpr = L // BT
    chunk = tl.program_id(0) // blocks
    block = tl.program_id(0) % blocks
    offs_o = tl.program_id(1) * BO + tl.arange(0, BO)
    bh = tl.program_id(2).to(tl.int64)
    batch = bh // heads
    head = bh % heads
    l_head = head * l_heads // heads
    r_head = head * r_heads // heads
    v_head = head * v_heads // heads
    offs_t = tl.arange(0, BT)
    rows_o = chunk * L + block * BT + offs_t
    slot = bh * (chunks + 1) + chunk + REVERSE

    acc = tl.zeros([BT, BO], dtype=state_ptr.dtype.element_ty)
    for k0 in range(0, dk, BK):
        offs_k = k0 + tl.arange(0, BK)
        valid = (offs_k < dk)[:, None] & (offs_o < do)[None, :]
        state = tl.load(
            state_ptr + slot * dk * do + offs_k[:, None] * state_stride_k + offs_o[None, :] * state_stride_o,
            mask=valid,
            other=0.0,
        )
        acc += _dot(_load_rows(l_ptr, batch, l_head, rows_o, offs_k, steps, l_heads, dk), state)
    acc = acc * tl.exp(tl.load(inter_ptr + bh * padded + rows_o))[:, None]

    a = tl.load(a_ptr + bh * padded + rows_o)
    if REVERSE:
        # log weight of key k for output o: sum_{o < r <= k} a_r, a cumulative sum along the keys.
        terms = tl.where(offs_t[None, :] > offs_t[:, None], a[None, :], 0.0)
        log_weight = tl.where(offs_t[None, :] >= offs_t[:, None], tl.cumsum(terms, 1), -float("inf"))
    else:
        # sum_{k < r <= o} a_r, a cumulative sum along the outputs.
        terms = tl.where(offs_t[:, None] > offs_t[None, :], a[:, None], 0.0)
        log_weight = tl.where(offs_t[:, None] >= offs_t[None, :], tl.cumsum(terms, 0), -float("inf"))
    acc = _block_pair(
        acc,
        l_ptr,
        r_ptr,
        v_ptr,
        dt_ptr,
        batch,
        l_head,
        r_head,
        v_head,
        bh,
        rows_o,
        rows_o,
        offs_o,
        log_weight,
        steps,
        padded,
        l_heads,
        r_heads,
        v_heads,
        dk,
        do,
        SCALE_KEYS,
        BT,
        BK,
    )

    block_tot = block_tot_ptr + bh * (padded // BT) + chunk * blocks
    gap = tl.full([], 0.0, a.dtype)
    if REVERSE:
        suf_o = tl.load(suf_ptr + bh * padded + rows_o)
        for key_block in range(block + 1, blocks):
            rows_k = chunk * L + key_block * BT + offs_t
            log_weight = suf_o[:, None] + gap + tl.load(pre_ptr + bh * padded + rows_k)[None, :]
            acc = _block_pair(
                acc,
                l_ptr,
                r_ptr,
                v_ptr,
                dt_ptr,
                batch,
                l_head,
                r_head,
                v_head,
                bh,
                rows_o,
                rows_k,
                offs_o,
                log_weight,
                steps,
                padded,
                l_heads,
                r_heads,
                v_heads,
                dk,
                do,
                SCALE_KEYS,
                BT,
                BK,
            )
            gap += tl.load(block_tot + key_block)
    else:
        pre_o = tl.load(pre_ptr + bh * padded + rows_o)
        for step in range(block):
            key_block = block - 1 - step
            rows_k = chunk * L + key_block * BT + offs_t
            log_weight = pre_o[:, None] + gap + tl.load(suf_ptr + bh * padded + rows_k)[None, :]
            acc = _block_pair(
                acc,
                l_ptr,
                r_ptr,
                v_ptr,
                dt_ptr,
                batch,
                l_head,
                r_head,
                v_head,
                bh,
                rows_o,
                rows_k,
                offs_o,
                log_weight,
                steps,
                padded,
                l_heads,
                r_heads,
                v_heads,
                dk,
                do,
                SCALE_KEYS,
                BT,
                BK,
            )
            gap += tl.load(block_tot + key_block)

    if SCALE_OUT:
        acc = acc * tl.load(dt_ptr + bh * padded + rows_o)[:, None]
    offsets = ((batch * steps + rows_o[:, None]) * heads + head) * do + offs_o[None, :]
    tl.store(out_ptr + offsets, acc, mask=(rows_o < steps)[:, None] & (offs_o < do)[None, :])


def unsupported_reason(x, dt, log_decay, B, C, initial_state, mask, chunk_size) -> str | None:
    """None when the Triton kernels compute these inputs, else why not."""
    reason = triton_device_reason(x.device, INTERPRETED, __name__)
    if reason is not None:
        return reason
    supported = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    for name, tensor in (("x", x), ("dt", dt), ("log_decay", log_decay), ("B", B), ("C", C)):
        if tensor.dtype not in supported:
            return f"the kernels compute in float32 (float64 for float64 x), got {tensor.dtype} for {name}"
    if x.numel() == 0 or B.numel() == 0:
        return f"empty inputs (x {list(x.shape)}, B {list(B.shape)}) launch no kernels; use backend 'torch'"
    if x.shape[0] * x.shape[2] > MAX_GRID_YZ:
        return f"Bt * H = {x.shape[0] * x.shape[2]} exceeds the launch grid's limit of {MAX_GRID_YZ} programs"
    return None


def ssd(x, dt, log_decay, B, C, initial_state, mask, chunk_size, *, block_intra=None):
    """See `hf_seqplugins.kernels.ssd` for the contract. x `[Bt, T, H, P]`, dt and log_decay `[Bt, T, H]`,
    B and C `[Bt, T, G, N]` (head h reads group h // (H / G)), initial_state None (zeros) or `[Bt, H, P, N]`,
    mask None or `[Bt, T]` bool (False = padding, folded in here as the operator does: dt = 0,
    log_decay = 0, x = B = C = 0, an identity step with y = 0).

    Returns y `[Bt, T, H, P]` and the final state `[Bt, H, P, N]`, both in the compute dtype (float64 for
    float64 x, else float32). `chunk_size` is rounded up to a power of two >= 16 (and down to the padded
    length for short inputs); `block_intra`, the intra-chunk block (a power of two >= 16 dividing the
    chunk), defaults to min(chunk, 64) (32 in float64). Raises `BackendUnavailableError` for what
    `unsupported_reason` refuses.
    """
    reason = unsupported_reason(x, dt, log_decay, B, C, initial_state, mask, chunk_size)
    if reason is not None:
        raise BackendUnavailableError(f"backend 'triton' for 'ssd' cannot run these inputs: {reason}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, steps, heads, dp = x.shape
    x, dt, log_decay, B, C = (t.to(dtype) for t in (x, dt, log_decay, B, C))
    if mask is not None:
        keep = mask.to(device=x.device, dtype=torch.bool)[:, :, None]
        dt = torch.where(keep, dt, 0.0)
        log_decay = torch.where(keep, log_decay, 0.0)
        x, B, C = (torch.where(keep[..., None], t, 0.0) for t in (x, B, C))
    if initial_state is None:
        initial_state = x.new_zeros(batch, heads, dp, B.shape[-1])
    config = _Config.make(steps, dp, B.shape[-1], chunk_size, block_intra, dtype)
    inputs = (x, dt, log_decay, B, C, initial_state.to(dtype))
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _SSDFunction.apply(config, *inputs)
    y, final_state, _ = _forward(config, *inputs)
    return y, final_state


class _Config:
    """Static launch parameters: chunk `L`, intra-chunk block `BT`, tiles `BP`, `BN` of P and N."""

    def __init__(self, chunk, block, block_p, block_n):
        self.chunk, self.block, self.block_p, self.block_n = chunk, block, block_p, block_n

    @classmethod
    def make(cls, steps, dp, dn, chunk_size, block_intra, dtype):
        max_tile = MAX_TILE_FLOAT64 if dtype == torch.float64 else MAX_HEAD_TILE
        chunk = min(
            max(MIN_DOT_SIZE, triton.next_power_of_2(chunk_size)), max(MIN_DOT_SIZE, triton.next_power_of_2(steps))
        )
        block = min(chunk, max_tile, MAX_INTRA_TILE) if block_intra is None else block_intra
        if block < MIN_DOT_SIZE or block & (block - 1) or chunk % block:
            raise ValueError(
                f"block_intra must be a power of two >= {MIN_DOT_SIZE} dividing the chunk ({chunk}), got {block}"
            )

        def tile(width):
            return min(max_tile, max(MIN_DOT_SIZE, triton.next_power_of_2(width)))

        return cls(chunk, block, tile(dp), tile(dn))


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _reverse_exclusive_cumsum(t):
    """`out[..., j] = sum_{r > j} t[..., r]`, summed directly (no difference of prefix sums)."""
    return F.pad(t[..., 1:].flip(-1).cumsum(-1).flip(-1), (0, 1))


def _per_step(t, padded):
    """`[Bt, T, H]` -> contiguous `[Bt * H, T']`, zero padded at the end."""
    return F.pad(t.transpose(1, 2), (0, padded - t.shape[1])).reshape(-1, padded).contiguous()


def _decays(config, log_decay, padded):
    """Chunk cumsum of the log decays: a dict of `[Bt * H, T']` per-step terms (a, chunk prefix `cum`,
    chunk suffix `suf`, block prefix `pre`, block suffix `block_suf`) and totals `tot [Bt * H, NC]`,
    `block_tot [Bt * H, T' / BT]`."""
    a = _per_step(log_decay, padded)
    bh = a.shape[0]
    by_chunk = a.view(bh, -1, config.chunk)
    by_block = a.view(bh, -1, config.block)
    return {
        "a": a,
        "cum": by_chunk.cumsum(-1).reshape(bh, padded),
        "suf": _reverse_exclusive_cumsum(by_chunk).reshape(bh, padded),
        "tot": by_chunk.sum(-1).contiguous(),
        "pre": by_block.cumsum(-1).reshape(bh, padded),
        "block_suf": _reverse_exclusive_cumsum(by_block).reshape(bh, padded),
        "block_tot": by_block.sum(-1).reshape(bh, -1).contiguous(),
    }


def _chunk_states(config, u, v, weight, states, slot_shift):
    """Launches `_chunk_state_kernel` writing `sum_j weight_j u_j v_j^T` into `states[:, c + slot_shift]`."""
    _, steps, heads, dp = u.shape
    groups, dn = v.shape[2:]
    bh, padded = weight.shape
    chunks = padded // config.chunk
    tiles = triton.cdiv(dp, config.block_p) * triton.cdiv(dn, config.block_n)
    _chunk_state_kernel[(chunks, tiles, bh)](
        u,
        v,
        weight,
        states,
        steps,
        padded,
        chunks,
        heads,
        groups,
        dp,
        dn,
        slot_shift,
        L=config.chunk,
        BT=config.block,
        BP=config.block_p,
        BN=config.block_n,
        num_warps=4,
    )


def _pass_states(states, tot, reverse):
    bh, slots, dp, dn = states.shape
    block = min(MAX_STATE_BLOCK, triton.next_power_of_2(dp * dn))
    _state_passing_kernel[(triton.cdiv(dp * dn, block), bh)](
        states, tot, slots - 1, dp * dn, REVERSE=reverse, BLOCK=block, num_warps=4
    )


def _scan(config, decays, dt, heads, lhs, rhs, values, states, *, out_p, reverse, scale_keys=False, scale_out=False):
    """Launches `_scan_kernel` (see there) and returns its output `[Bt, T, H, DO]`, DO = values' width.

    `out_p`: the output has width P (y, dX; DK = N) and the state `states [Bt * H, NC + 1, P, N]` is read
    transposed, as `[N, P]`; else the output has width N (dC, dB; DK = P) and the state is read as stored.
    """
    batch, steps, _, dk = lhs.shape
    do = values.shape[-1]
    bh, padded = dt.shape
    chunks = padded // config.chunk
    dn = states.shape[-1]
    if out_p:
        block_k, block_o, stride_k, stride_o = config.block_n, config.block_p, 1, dn
    else:
        block_k, block_o, stride_k, stride_o = config.block_p, config.block_n, dn, 1
    out = lhs.new_empty(batch, steps, heads, do)
    inter = decays["suf"] if reverse else decays["cum"]
    _scan_kernel[(chunks * (config.chunk // config.block), triton.cdiv(do, block_o), bh)](
        lhs,
        rhs,
        values,
        states,
        out,
        decays["a"],
        decays["pre"],
        decays["block_suf"],
        decays["block_tot"],
        inter,
        dt,
        steps,
        padded,
        chunks,
        heads,
        lhs.shape[2],
        rhs.shape[2],
        values.shape[2],
        dk,
        do,
        stride_k,
        stride_o,
        REVERSE=reverse,
        SCALE_KEYS=scale_keys,
        SCALE_OUT=scale_out,
        L=config.chunk,
        BT=config.block,
        BK=block_k,
        BO=block_o,
        num_warps=4,
    )
    return out


def _forward(config, x, dt, log_decay, B, C, initial_state):
    """The forward kernels on inputs of the compute dtype.

    Returns y `[Bt, T, H, P]`, the final state `[Bt, H, P, N]` and, for the backward, a dict of the
    contiguous inputs, the padded per-step dt `[Bt * H, T']`, the decays (`_decays`) and the states
    entering every chunk plus the final one, `states [Bt * H, NC + 1, P, N]`.
    """
    batch, steps, heads, dp = x.shape
    dn = B.shape[-1]
    padded = triton.cdiv(steps, config.chunk) * config.chunk
    x, B, C = (t.contiguous() for t in (x, B, C))
    dt_steps = _per_step(dt, padded)
    decays = _decays(config, log_decay, padded)
    states = x.new_empty(batch * heads, padded // config.chunk + 1, dp, dn)
    states[:, 0] = initial_state.reshape(batch * heads, dp, dn)
    with _device_guard(x.device):
        _chunk_states(config, x, B, dt_steps * torch.exp(decays["suf"]), states, 1)
        _pass_states(states, decays["tot"], reverse=False)
        y = _scan(config, decays, dt_steps, heads, C, B, x, states, out_p=True, reverse=False, scale_keys=True)
    final_state = states[:, -1].reshape(batch, heads, dp, dn).clone()
    saved = {"x": x, "B": B, "C": C, "dt": dt_steps, "states": states, "y": y, **decays}
    return y, final_state, saved


def _backward(config, saved, d_y, d_final):
    """Gradients of (x, dt, log_decay, B, C, initial_state) from those of y `[Bt, T, H, P]` and of the
    final state `[Bt, H, P, N]`; the formulas are in the module docstring."""
    x, B, C, dt_steps, states, y = (saved[name] for name in ("x", "B", "C", "dt", "states", "y"))
    batch, steps, heads, dp = x.shape
    groups, dn = B.shape[2:]
    bh, padded = dt_steps.shape
    chunks = padded // config.chunk
    d_y = d_y.to(x.dtype).contiguous()
    d_states = torch.empty_like(states)
    d_states[:, -1] = d_final.to(x.dtype).reshape(bh, dp, dn)
    with _device_guard(x.device):
        _chunk_states(config, d_y, C, torch.exp(saved["cum"]), d_states, 0)
        _pass_states(d_states, saved["tot"], reverse=True)
        d_c = _scan(config, saved, dt_steps, heads, d_y, x, B, states, out_p=False, reverse=False, scale_keys=True)
        d_xdt = _scan(config, saved, dt_steps, heads, B, C, d_y, d_states, out_p=True, reverse=True)
        d_b = _scan(config, saved, dt_steps, heads, x, d_y, C, d_states, out_p=False, reverse=True, scale_out=True)

    dt = dt_steps[:, :steps].reshape(batch, heads, steps).transpose(1, 2)
    d_x = d_xdt * dt[..., None]
    d_dt = (d_xdt * x).sum(-1)
    # Per step: dy . y - X . dX, summed in reverse inside each chunk; the pairs crossing the chunk's end
    # add the gradient of a scale of the state leaving it.
    crossing = _per_step((d_y * y).sum(-1) - dt * d_dt, padded).view(bh, chunks, config.chunk)
    boundary = (d_states[:, 1:] * states[:, 1:]).sum((-2, -1))
    d_log_decay = (crossing.flip(-1).cumsum(-1).flip(-1) + boundary[..., None]).reshape(bh, padded)
    d_log_decay = d_log_decay[:, :steps].reshape(batch, heads, steps).transpose(1, 2)

    def group_sum(t):
        return t.view(batch, steps, groups, heads // groups, dn).sum(3)

    return d_x, d_dt, d_log_decay, group_sum(d_b), group_sum(d_c), d_states[:, 0].reshape(batch, heads, dp, dn)


class _SSDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, config, x, dt, log_decay, B, C, initial_state):
        y, final_state, saved = _forward(config, x, dt, log_decay, B, C, initial_state)
        ctx.config = config
        ctx.names = list(saved)
        ctx.save_for_backward(*saved.values())
        return y, final_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_y, d_final):
        saved = dict(zip(ctx.names, ctx.saved_tensors))
        return (None, *_backward(ctx.config, saved, d_y, d_final))
