"""Causal normalised linear attention on feature-mapped queries and keys (JRT-RNN, `docs/architectures/jrt.md`).

`feature_linear_attention(q, k, v, initial_state=None, mask=None, eps=1e-12, *, resets=None, chunk_size=64,
backend=None) -> (outputs, final_state)`

Per batch row and head, with query features q_i and key features k_i (already mapped, e.g. by
`taylor_features`), values v_i and the state (S_0, z_0) before the first token:

    S_i = S_0 + sum_{j<=i} k_j v_j^T        z_i = z_0 + sum_{j<=i} k_j
    y_i = q_i^T S_i / (q_i^T z_i + eps)

Shapes (B batch, T time, H heads, F features, D value size):

- `q`, `k` `[B, T, H, F]`, `v` `[B, T, H, D]`, floating;
- `initial_state` `(S [B, H, F, D], z [B, H, F])` or None (zeros);
- `mask` `[B, T]` bool or None: False marks padding (the state is held, nothing is read there);
- `eps` a float >= 0 added to the denominator;
- `resets` `[B, T]` bool or None (keyword): True where a packed sequence starts (the state is zeroed there);
- `chunk_size`: chunk length of the chunked backend (results do not depend on it).

Returns `outputs [B, T, H, D]` in the values' dtype and the final state in the compute dtype (at least float32).
The denominator is the caller's business: with features whose inner products are positive (the Taylor map's
``1 + x + x^2 / 2 >= 1/2``) and a non-negative z it stays positive; with arbitrary features it can vanish.

Backend contract (what `validate` hands every backend, positionally): ``(q, k, v, initial_state, mask, eps,
chunk_size)`` with q, k, v in the compute dtype and zeroed at padding (selected with `torch.where`, so NaN
there stays out; a zero key and value add nothing to the state, which makes every padded step an identity),
the initial state a tuple in the compute dtype, `mask` `[B, T]` bool or None; "reference" also takes
``resets=``. A backend returns `(outputs [B, T, H, D], (S, z))`; its outputs at padded steps are those of the
held state. Backends: "reference" (the token loop), "torch" (chunked: a masked chunk x chunk matrix inside each
chunk, states passed between chunks by a cumulative sum), "triton" (the recurrence as a kernel, the state in
registers).
"""

from __future__ import annotations

import math
import numbers

import torch

from hf_seqplugins import Operator, compute_dtype, triton_unavailable_reason

__all__ = ["OPERATOR", "feature_linear_attention", "state_shapes", "taylor_features", "taylor_feature_dim"]


def taylor_feature_dim(feature_dim: int) -> int:
    """Size 1 + f + f^2 of `taylor_features` for inputs of size f."""
    return 1 + feature_dim + feature_dim**2


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    """Based's second-order Taylor feature map: x `[..., f]` -> `[..., 1 + f + f^2]`,
    ``[1, x / f^(1/4), vec(x x^T) / (sqrt(2) sqrt(f))]``, so that ``phi(q) . phi(k) = 1 + s + s^2 / 2`` with
    ``s = q . k / sqrt(f)``: the Taylor expansion of ``exp(s)`` to second order (always >= 1/2)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"taylor_features: x must be a floating-point tensor [..., f], got {getattr(x, 'dtype', x)}")
    size = x.shape[-1]
    if size == 0:
        raise ValueError("taylor_features: x has no features (f = 0)")
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2) / (math.sqrt(2) * math.sqrt(size))
    return torch.cat([torch.ones_like(x[..., :1]), x / size**0.25, outer], dim=-1)


def state_shapes(batch: int, heads: int, feature_dim: int, value_dim: int) -> list[tuple[int, ...]]:
    """Shapes of the state `(S, z)`."""
    return [(batch, heads, feature_dim, value_dim), (batch, heads, feature_dim)]


def _check_state(state, shapes: list[tuple[int, ...]], device, dtype):
    if not isinstance(state, (tuple, list)) or len(state) != 2 or not all(isinstance(s, torch.Tensor) for s in state):
        raise TypeError(
            f"feature_linear_attention: initial_state must be a tuple of 2 tensors (S, z), got {type(state).__name__}"
        )
    got = [tuple(s.shape) for s in state]
    if got != shapes:
        raise ValueError(f"feature_linear_attention: initial_state (S, z) must have shapes {shapes}, got {got}")
    if not all(s.is_floating_point() for s in state):
        raise TypeError(
            f"feature_linear_attention: initial_state must be floating point, got {[s.dtype for s in state]}"
        )
    return tuple(s.to(device=device, dtype=dtype) for s in state)


def _validate(q, k, v, initial_state=None, mask=None, eps: float = 1e-12, chunk_size: int = 64):
    for label, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(
                f"feature_linear_attention: {label} must be a floating-point tensor, "
                f"got {getattr(t, 'dtype', type(t).__name__)}"
            )
        if t.dim() != 4:
            raise ValueError(
                f"feature_linear_attention: {label} must be 4-dimensional [B, T, H, *], got {list(t.shape)}"
            )
    batch, steps, heads, features = q.shape
    if steps == 0:
        raise ValueError("feature_linear_attention: no time steps (T=0)")
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"feature_linear_attention: k must have the shape of q {list(q.shape)}, got {list(k.shape)}")
    if tuple(v.shape[:3]) != (batch, steps, heads):
        raise ValueError(
            f"feature_linear_attention: v must be [B, T, H, D] with [B, T, H] = {[batch, steps, heads]}, "
            f"got {list(v.shape)}"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"feature_linear_attention: q, k, v are on {q.device}, {k.device}, {v.device}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0 or math.isinf(eps):
        raise ValueError(f"feature_linear_attention: eps must be a finite float >= 0, got {eps!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"feature_linear_attention: chunk_size must be a positive int, got {chunk_size!r}")
    dtype = compute_dtype(torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype))
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    shapes = state_shapes(batch, heads, features, v.shape[-1])
    if initial_state is None:
        initial_state = tuple(torch.zeros(shape, dtype=dtype, device=q.device) for shape in shapes)
    else:
        initial_state = _check_state(initial_state, shapes, q.device, dtype)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, steps):
            raise ValueError(
                f"feature_linear_attention: mask must be [B, T] = {[batch, steps]}, "
                f"got {list(getattr(mask, 'shape', [type(mask).__name__]))}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"feature_linear_attention: mask must be bool (False = padding), got {mask.dtype}")
        mask = mask.to(q.device)
        real = mask[..., None, None]
        q, k, v = torch.where(real, q, 0), torch.where(real, k, 0), torch.where(real, v, 0)
    return (q, k, v, initial_state, mask, float(eps), int(chunk_size)), {}


def _load_reference():
    from .reference import feature_linear_attention as kernel

    return kernel


def _load_torch():
    from .torch_impl import feature_linear_attention as kernel

    return kernel


def _load_triton():
    from .triton_impl import feature_linear_attention as kernel

    return kernel


def _triton_input_check(*validated_args):
    from .triton_impl import unsupported_reason

    return unsupported_reason(*validated_args)


def _positive_example(batch: int, length: int, dtype: torch.dtype, generator: torch.Generator) -> dict:
    """Positive random features: H = 2 heads, F = 5, D = 3, a non-zero initial state (z > 0)."""

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "q": (randn(batch, length, 2, 5).abs() + 0.1).to(dtype),
        "k": (randn(batch, length, 2, 5).abs() + 0.1).to(dtype),
        "v": randn(batch, length, 2, 3).to(dtype),
        "initial_state": (randn(batch, 2, 5, 3), randn(batch, 2, 5).abs() + 0.5),
    }


def _taylor_example(batch: int, length: int, dtype: torch.dtype, generator: torch.Generator) -> dict:
    """Taylor features of random f = 2 queries and keys (F = 7), H = 2, D = 4, the state of 3 earlier tokens."""

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    earlier_k, earlier_v = taylor_features(randn(batch, 3, 2, 2)), randn(batch, 3, 2, 4)
    return {
        "q": taylor_features(randn(batch, length, 2, 2)).to(dtype),
        "k": taylor_features(randn(batch, length, 2, 2)).to(dtype),
        "v": randn(batch, length, 2, 4).to(dtype),
        "initial_state": (torch.einsum("bthf,bthd->bhfd", earlier_k, earlier_v), earlier_k.sum(1)),
    }


def _result(output: tuple, arguments: dict) -> tuple:
    outputs, state = output
    return outputs.to(arguments["v"].dtype), state


OPERATOR = Operator(
    name="feature_linear_attention",
    backends={"reference": _load_reference, "torch": _load_torch, "triton": _load_triton},
    validate=_validate,
    sequences=("q", "k", "v"),
    native_resets=frozenset({"reference"}),
    result=_result,
    requirements={"triton": triton_unavailable_reason},
    input_checks={"triton": _triton_input_check},
    examples={"positive_features": _positive_example, "taylor_features": _taylor_example},
)


def feature_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
    eps: float = 1e-12,
    *,
    resets: torch.Tensor | None = None,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Run causal normalised linear attention; see the module docstring. `backend`: None/"auto" or a name."""
    return OPERATOR(q, k, v, initial_state, mask, eps, chunk_size, backend=backend, resets=resets)
