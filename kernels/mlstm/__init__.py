"""mLSTM sequence operator (`docs/architectures/xlstm.md`): matrix memory with exponential or sigmoid input gate.

`mlstm(q, k, v, igate, fgate, initial_state=None, mask=None, *, resets=None, input_gate="exp",
normalize=True, eps=1e-6, chunk_size=64, backend=None) -> (h, (C, n, m))`

Shapes (B batch, T time, NH heads, DK query/key head dim, DV value head dim), batch first, time second:

- `q`, `k` `[B, T, NH, DK]`, `v` `[B, T, NH, DV]`, one floating dtype for the three;
  q is scaled by 1/sqrt(DK) inside, k is not.
- `igate`, `fgate` `[B, T, NH]`: gate pre-activations, already soft-capped by the caller.
- `initial_state`: None (zeros, m = 0) or `(C [B, NH, DK, DV], n [B, NH, DK], m [B, NH])`.
- `mask` `[B, T]` bool or None: False marks padding, where the state is carried over unchanged and
  the output is 0 (nothing is read there: NaN in padded inputs stays out).
- `resets` `[B, T]` bool or None: True where a new sequence starts (the state is zeroed, m = 0, before it).
- `input_gate`: "exp" (mLSTMexp, states stabilised by the max state m) or "sigmoid"
  (mLSTMsig: no stabiliser, m is ignored and returned unchanged). `normalize` applies to
  "sigmoid" only: False gives h = C^T q / sqrt(DK) without the normalizer. `eps` is added to the
  normalizer. `chunk_size` is the chunk length of the chunkwise backends (results do not depend on it).

Returns `h [B, T, NH, DV]` in q's dtype and the final state `(C, n, m)` in the compute dtype: float32
for half-precision inputs (gates, log-gates, cumulative sums, max and states always are), else q's
dtype. With the zero initial state (m = 0) every backend computes exactly the step recurrence,
so the parallel form equals the step loop even at eps > 0 (the eps-level difference in `docs/architectures/xlstm.md`,
section 'Pitfalls handled', concerns
parallel forms without the m_0 = 0 term, e.g. mlstm_kernels' `parallel--native_stablef`).

Backend contract (what `validate` hands every backend, positionally, in the heads-first layout the kernels
use): ``(q, k, v, igate, fgate, initial_state, mask, input_gate, normalize, eps, chunk_size)`` with

- `q`, `k` `[B, NH, T, DK]`, `v` `[B, NH, T, DV]` in the caller's dtype (possibly half precision: a backend
  upcasts or accumulates in float32 itself), 0 at padded positions;
- `igate`, `fgate` in the compute dtype, the mask folded in: igate = -inf and fgate = +inf at padded
  positions (so logsigmoid(fgate) = 0 and the input weight is 0: an exact identity step);
- `initial_state` None (meaning zeros with m = 0; not materialised) or the tuple in the compute dtype;
- `mask` always None (already folded into q and the gates);
- `input_gate` "exp" | "sigmoid", `normalize` bool, `eps` float >= 0, `chunk_size` int >= 1.

A backend returns `(h [B, NH, T, DV], (C, n, m))`; h in the compute dtype or q's dtype (the operator
transposes it back and casts it to q's dtype). Backends: "reference" (step loop; takes ``resets=`` itself),
"torch" (chunkwise, the default on CPU), "parallel" (quadratic form, one chunk), "mlstm_kernels" (peer, exp
gate only), "triton"; all but the reference get packed rows one sequence per row.

A call with T = 1 (decoding) runs one reference step; `mlstm_step(q, k, v, igate, fgate, state, ...)` is the
same step on per-token tensors without the time axis.
"""

from __future__ import annotations

import math
import numbers

import torch

from hf_seqplugins import Operator, compute_dtype, module_unavailable_reason, triton_unavailable_reason

from .reference import step

__all__ = ["INPUT_GATES", "OPERATOR", "compute_dtype", "mlstm", "mlstm_step", "state_shapes"]

INPUT_GATES = ("exp", "sigmoid")

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def state_shapes(batch: int, heads: int, dk: int, dv: int) -> list[tuple[int, ...]]:
    """Shapes of `(C, n, m)`."""
    return [(batch, heads, dk, dv), (batch, heads, dk), (batch, heads)]


def _check_options(name: str, input_gate: str, normalize: bool, eps: float) -> None:
    if input_gate not in INPUT_GATES:
        raise ValueError(f"{name}: unknown input_gate {input_gate!r}; expected one of {INPUT_GATES}")
    if not isinstance(normalize, bool):
        raise TypeError(f"{name}: normalize must be a bool, got {normalize!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0 or math.isinf(eps):
        raise ValueError(f"{name}: eps must be a finite real number >= 0, got {eps!r}")


def _check_state(
    name: str, state: State, shapes: list[tuple[int, ...]], device: torch.device, dtype: torch.dtype
) -> State:
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise ValueError(f"{name}: the state must be a tuple (C, n, m), got {type(state).__name__}")
    got = [tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__ for s in state]
    if got != shapes:
        raise ValueError(f"{name}: the state (C, n, m) must have shapes {shapes}, got {got}")
    for label, s in zip("Cnm", state):
        if not s.is_floating_point():
            raise TypeError(f"{name}: state {label} must be floating point, got {s.dtype}")
        if s.device != device:
            raise ValueError(f"{name}: state {label} is on {s.device}, q on {device}")
    return tuple(s.to(dtype) for s in state)


def _validate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    initial_state: State | None = None,
    mask: torch.Tensor | None = None,
    input_gate: str = "exp",
    normalize: bool = True,
    eps: float = 1e-6,
    chunk_size: int = 64,
):
    named = {"q": q, "k": k, "v": v, "igate": igate, "fgate": fgate}
    for label, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"mlstm: {label} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"mlstm: {label} must be floating point, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"mlstm: {label} is on {t.device}, q on {q.device}")
    if q.dim() != 4:
        raise ValueError(f"mlstm: q must be [B, T, NH, DK], got shape {list(q.shape)}")
    batch, steps, heads, dk = q.shape
    if steps == 0:
        raise ValueError("mlstm: q has no time steps (T=0)")
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"mlstm: k must have q's shape [B, T, NH, DK] = {list(q.shape)}, got {list(k.shape)}")
    if v.dim() != 4 or tuple(v.shape[:3]) != (batch, steps, heads):
        raise ValueError(
            f"mlstm: v must be [B, T, NH, DV] with [B, T, NH] = {[batch, steps, heads]}, got {list(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"mlstm: q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for label in ("igate", "fgate"):
        if tuple(named[label].shape) != (batch, steps, heads):
            raise ValueError(
                f"mlstm: {label} must be [B, T, NH] = {[batch, steps, heads]}, got {list(named[label].shape)}"
            )
    _check_options("mlstm", input_gate, normalize, eps)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"mlstm: chunk_size must be a positive int, got {chunk_size!r}")
    dtype = compute_dtype(q.dtype)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    igate, fgate = (g.to(dtype).transpose(1, 2) for g in (igate, fgate))
    if initial_state is not None:
        initial_state = _check_state(
            "mlstm: initial_state", initial_state, state_shapes(batch, heads, dk, v.shape[-1]), q.device, dtype
        )
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, steps):
            raise ValueError(
                f"mlstm: mask must be [B, T] = {[batch, steps]}, "
                f"got {list(getattr(mask, 'shape', [type(mask).__name__]))}"
            )
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"mlstm: mask must be bool (False = padding), got {mask.dtype}")
        keep = mask.to(device=q.device, dtype=torch.bool)[:, None, :]
        igate = torch.where(keep, igate, -math.inf)
        fgate = torch.where(keep, fgate, math.inf)
        q, k, v = (torch.where(keep[..., None], t, 0) for t in (q, k, v))
    return (q, k, v, igate, fgate, initial_state, None, input_gate, normalize, float(eps), int(chunk_size)), {}


def _load_reference():
    from .reference import mlstm as kernel

    return kernel


def _load_torch():
    from .torch_impl import mlstm as kernel

    return kernel


def _load_parallel():
    from .torch_impl import mlstm_parallel as kernel

    return kernel


def _load_mlstm_kernels():
    from .mlstm_kernels_peer import mlstm as kernel

    return kernel


def _load_triton():
    from .triton_impl import mlstm as kernel

    return kernel


def _mlstm_kernels_input_check(*validated_args):
    from .mlstm_kernels_peer import unsupported_reason

    return unsupported_reason(*validated_args)


def _triton_input_check(*validated_args):
    from .triton_impl import unsupported_reason

    return unsupported_reason(*validated_args)


def _example(
    batch: int,
    length: int,
    dtype: torch.dtype,
    generator: torch.Generator,
    input_gate: str = "exp",
    normalize: bool = True,
) -> dict:
    """Random inputs: NH = 2 heads, DK = 4, DV = 3, gate pre-activations ~ N(0, 3), a non-zero initial state."""
    heads, dk, dv = 2, 4, 3

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)

    state = (randn(batch, heads, dk, dv), randn(batch, heads, dk).abs(), randn(batch, heads))
    return {
        "q": randn(batch, length, heads, dk),
        "k": randn(batch, length, heads, dk),
        "v": randn(batch, length, heads, dv),
        "igate": randn(batch, length, heads, scale=3.0),
        "fgate": randn(batch, length, heads, scale=3.0) + 2,
        "initial_state": state,
        "input_gate": input_gate,
        "normalize": normalize,
    }


def _result(output: tuple, arguments: dict) -> tuple:
    h, state = output
    return h.transpose(1, 2).to(arguments["q"].dtype), state


OPERATOR = Operator(
    name="mlstm",
    backends={
        "reference": _load_reference,
        "torch": _load_torch,
        "parallel": _load_parallel,
        "mlstm_kernels": _load_mlstm_kernels,
        "triton": _load_triton,
    },
    validate=_validate,
    sequences=("q", "k", "v", "igate", "fgate"),
    native_resets=frozenset({"reference"}),
    result=_result,
    requirements={"triton": triton_unavailable_reason, "mlstm_kernels": module_unavailable_reason("mlstm_kernels")},
    input_checks={"triton": _triton_input_check, "mlstm_kernels": _mlstm_kernels_input_check},
    examples={
        "exp": _example,
        "sigmoid": lambda *a: _example(*a, input_gate="sigmoid"),
        "sigmoid_unnormalized": lambda *a: _example(*a, input_gate="sigmoid", normalize=False),
    },
)


def mlstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    initial_state: State | None = None,
    mask: torch.Tensor | None = None,
    *,
    resets: torch.Tensor | None = None,
    input_gate: str = "exp",
    normalize: bool = True,
    eps: float = 1e-6,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[torch.Tensor, State]:
    """Run the mLSTM over a sequence; see the module docstring. `backend`: None/"auto" or a name."""
    return OPERATOR(
        q,
        k,
        v,
        igate,
        fgate,
        initial_state,
        mask,
        input_gate,
        normalize,
        eps,
        chunk_size,
        backend=backend,
        resets=resets,
    )


def mlstm_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate: torch.Tensor,
    fgate: torch.Tensor,
    state: State | None,
    *,
    input_gate: str = "exp",
    normalize: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, State]:
    """One recurrent step for decoding: O(1) in the sequence length.

    q, k `[B, NH, DK]`, v `[B, NH, DV]`, igate, fgate `[B, NH]`, state `(C, n, m)` as in `mlstm`
    (None = zeros). Returns `(h [B, NH, DV] in q's dtype, new state in the compute dtype)`.
    """
    if q.dim() != 3 or tuple(k.shape) != tuple(q.shape):
        raise ValueError(
            f"mlstm_step: q and k must be [B, NH, DK] of one shape, got {list(q.shape)} and {list(k.shape)}"
        )
    batch, heads, dk = q.shape
    if v.dim() != 3 or tuple(v.shape[:2]) != (batch, heads):
        raise ValueError(f"mlstm_step: v must be [B, NH, DV] with [B, NH] = {[batch, heads]}, got {list(v.shape)}")
    for label, gate in (("igate", igate), ("fgate", fgate)):
        if tuple(gate.shape) != (batch, heads):
            raise ValueError(f"mlstm_step: {label} must be [B, NH] = {[batch, heads]}, got {list(gate.shape)}")
    _check_options("mlstm_step", input_gate, normalize, eps)
    dtype = compute_dtype(q.dtype)
    shapes = state_shapes(batch, heads, dk, v.shape[-1])
    if state is None:
        state = tuple(q.new_zeros(shape, dtype=dtype) for shape in shapes)
    else:
        state = _check_state("mlstm_step: state", state, shapes, q.device, dtype)
    h, state = step(
        q.to(dtype), k.to(dtype), v.to(dtype), igate.to(dtype), fgate.to(dtype), state, input_gate, normalize, eps
    )
    return h.to(q.dtype), state
