"""Test-time memory: an MLP per head trained online by its inner objective (Miras: Moneta, Yaad, Memora).

`test_time_memory(q, k, v, gates, memory, initial_state=None, mask=None, variant="yaad", memory_chunk=16,
retrieval="dual_form", bias_power=3.0, retention_power=4.0, memora_scale=1.0, eps=1e-6, *, resets=None,
backend=None) -> (outputs, final_state)`

Per head the memory is ``M(x) = x + LN(W1 gelu(W2 x))`` (`memory.py`), its weights starting from the learned
`memory`. The tokens come in chunks of `memory_chunk`; within a chunk every token's inner gradient is taken at
the chunk-start weights W (mini-batch test-time gradient descent; `memory_chunk` = 1 is the exact per-token
recurrence), and each variant accumulates them with the retention gate alpha and the learning rate eta:

- "yaad": Huber bias (``1/2 ||e||^2``, or ``delta ||e||_1`` (smoothed) where ``||e|| > delta``), l2 retention:
  ``W_t = alpha_t W_{t-1} - eta_t grad``;
- "moneta": l_p bias (``||e||_p^p``, p = `bias_power`), l_q retention (q = `retention_power`): the accumulator
  ``A_t = alpha_t A_{t-1} - eta_t grad``, the weights ``A / ||A||_q^(q-2)``, the normaliser refreshed at chunk
  boundaries (inside a chunk, the chunk start's);
- "memora": l2 bias, KL retention: log-weights ``L_t = alpha_t L_{t-1} - eta_t grad`` and weights
  ``memora_scale * softmax(L)`` over each row (the input axis), so they are positive and each row sums to c.

Token t reads ``y_t = M_{W_t}(q_t)`` with its own updated weights (`retrieval` "dual_form"), or with the
chunk-start weights W ("chunk_start": cheaper, an approximation in which tokens of a chunk do not see each other
through the memory).

Shapes (B batch, T time, H heads, D head size, E memory hidden size):

- `q`, `k`, `v` `[B, T, H, D]` floating;
- `gates` `[B, T, H, 2]` (eta >= 0, alpha in (0, 1]), Yaad `[B, T, H, 3]` (and delta > 0);
- `memory` `(W1 [H, D, E], W2 [H, E, D])`: the initial weights (Memora: log-weights), usually parameters;
- `initial_state` `(X1 [B, H, D, E], X2 [B, H, E, D], C1, C2, count [B])` or None: the accumulators X and the
  chunk-start accumulators C as offsets from `memory` (zeros = the initial memory, so a packed sequence's
  reset starts it afresh), and each row's tokens into the current chunk (a float holding an integer);
- `mask` `[B, T]` bool or None (False = padding: the step is skipped, it does not count towards a chunk).

Returns `outputs [B, T, H, D]` in the values' dtype and the final state (compute dtype, at least float32).

Backend contract (what `validate` hands every backend, positionally): ``(q, k, v, gates, state, mask, variant,
memory_chunk, retrieval, bias_power, retention_power, memora_scale, eps)`` with q, k, v zeroed and gates set
to the identity (eta 0, alpha 1, delta 1) at padding, the state as full accumulators (memory + offsets). A
backend returns `(outputs, state)` in that form. Backends: "reference" (the token loop, inner gradients by
autograd), "torch" (chunk-parallel, closed-form gradients, the dual form; `torch_impl.py`), "triton" (the torch
backend's chunk loop as one kernel per batch row and head, Yaad and Moneta; `triton_impl.py`).
"""

from __future__ import annotations

import math
import numbers

import torch

from hf_seqplugins import Operator, compute_dtype, triton_unavailable_reason

from .memory import VARIANTS

__all__ = ["OPERATOR", "RETRIEVALS", "VARIANTS", "state_shapes", "test_time_memory"]

RETRIEVALS = ("dual_form", "chunk_start")


def state_shapes(batch: int, heads: int, head_dim: int, hidden_dim: int) -> list[tuple[int, ...]]:
    """Shapes of the state `(X1, X2, C1, C2, count)`."""
    first, second = (batch, heads, head_dim, hidden_dim), (batch, heads, hidden_dim, head_dim)
    return [first, second, first, second, (batch,)]


def _tensor_error(label: str, t) -> str | None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return f"{label} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}"
    return None


def _check_options(variant, memory_chunk, retrieval, bias_power, retention_power, memora_scale, eps) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"test_time_memory: variant must be one of {list(VARIANTS)}, got {variant!r}")
    if retrieval not in RETRIEVALS:
        raise ValueError(f"test_time_memory: retrieval must be one of {list(RETRIEVALS)}, got {retrieval!r}")
    if isinstance(memory_chunk, bool) or not isinstance(memory_chunk, numbers.Integral) or memory_chunk < 1:
        raise ValueError(f"test_time_memory: memory_chunk must be a positive int, got {memory_chunk!r}")
    for label, value, least in (("bias_power", bias_power, 1), ("retention_power", retention_power, 2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not least <= value < math.inf:
            raise ValueError(f"test_time_memory: {label} must be a finite number >= {least}, got {value!r}")
    for label, value in (("memora_scale", memora_scale), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
            raise ValueError(f"test_time_memory: {label} must be a finite number > 0, got {value!r}")


def _validate(
    q,
    k,
    v,
    gates,
    memory,
    initial_state=None,
    mask=None,
    variant: str = "yaad",
    memory_chunk: int = 16,
    retrieval: str = "dual_form",
    bias_power: float = 3.0,
    retention_power: float = 4.0,
    memora_scale: float = 1.0,
    eps: float = 1e-6,
):
    _check_options(variant, memory_chunk, retrieval, bias_power, retention_power, memora_scale, eps)
    for label, t in (("q", q), ("k", k), ("v", v), ("gates", gates)):
        if (error := _tensor_error(label, t)) is not None:
            raise TypeError(f"test_time_memory: {error}")
        if t.dim() != 4:
            raise ValueError(f"test_time_memory: {label} must be 4-dimensional [B, T, H, *], got {list(t.shape)}")
    batch, steps, heads, dim = q.shape
    if steps == 0:
        raise ValueError("test_time_memory: no time steps (T=0)")
    for label, t in (("k", k), ("v", v)):
        if tuple(t.shape) != tuple(q.shape):
            raise ValueError(f"test_time_memory: {label} must have the shape of q {list(q.shape)}, got {list(t.shape)}")
    num_gates = 3 if variant == "yaad" else 2
    if tuple(gates.shape) != (batch, steps, heads, num_gates):
        raise ValueError(
            f"test_time_memory: gates must be [B, T, H, {num_gates}] = {[batch, steps, heads, num_gates]} "
            f"for {variant!r} ((eta, alpha{', delta' if num_gates == 3 else ''})), got {list(gates.shape)}"
        )
    if not isinstance(memory, (tuple, list)) or len(memory) != 2 or any(_tensor_error("", w) for w in memory):
        raise TypeError("test_time_memory: memory must be a tuple of 2 floating tensors (W1 [H, D, E], W2 [H, E, D])")
    hidden = memory[0].shape[-1] if memory[0].dim() == 3 else -1
    expected = [(heads, dim, hidden), (heads, hidden, dim)]
    if hidden < 1 or [tuple(w.shape) for w in memory] != expected:
        raise ValueError(
            f"test_time_memory: memory must be (W1 [H, D, E], W2 [H, E, D]) with H, D = {heads}, {dim}, "
            f"got {[list(w.shape) for w in memory]}"
        )
    if any(t.device != q.device for t in (k, v, gates, *memory)):
        raise ValueError("test_time_memory: q, k, v, gates and memory must be on one device")
    dtype = compute_dtype(torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype))
    q, k, v, gates = q.to(dtype), k.to(dtype), v.to(dtype), gates.to(dtype)
    w1, w2 = (w.to(dtype) for w in memory)
    identity = torch.tensor([0.0, 1.0, 1.0][:num_gates], dtype=dtype, device=q.device)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, steps):
            raise ValueError(
                f"test_time_memory: mask must be [B, T] = {[batch, steps]}, "
                f"got {list(getattr(mask, 'shape', [type(mask).__name__]))}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"test_time_memory: mask must be bool (False = padding), got {mask.dtype}")
        mask = mask.to(q.device)
        real = mask[..., None, None]
        q, k, v = (torch.where(real, t, 0) for t in (q, k, v))
        gates = torch.where(real, gates, identity)
    _check_gates(gates, variant)
    shapes = state_shapes(batch, heads, dim, hidden)
    if initial_state is None:
        initial_state = [torch.zeros(shape, dtype=dtype, device=q.device) for shape in shapes]
    else:
        initial_state = _check_state(initial_state, shapes, q.device, dtype)
    x1, x2, c1, c2, count = initial_state
    if bool(((count < 0) | (count >= memory_chunk) | (count != count.round())).any()):
        raise ValueError(
            f"test_time_memory: the state's count must hold whole numbers in [0, memory_chunk={memory_chunk}), "
            f"got {count.tolist()} (a state from another memory_chunk?)"
        )
    state = (w1 + x1, w2 + x2, w1 + c1, w2 + c2, count.detach())
    options = (variant, int(memory_chunk), retrieval, float(bias_power), float(retention_power))
    return (q, k, v, gates, state, mask, *options, float(memora_scale), float(eps)), {}


def _check_gates(gates: torch.Tensor, variant: str) -> None:
    lr, decay = gates[..., 0], gates[..., 1]
    problems = []
    if not bool((lr >= 0).all()):
        problems.append("eta (gates[..., 0]) must be >= 0")
    if not bool(((decay > 0) & (decay <= 1)).all()):
        problems.append("alpha (gates[..., 1]) must be in (0, 1]")
    if variant == "yaad" and not bool((gates[..., 2] > 0).all()):
        problems.append("delta (gates[..., 2]) must be > 0")
    if problems:
        raise ValueError("test_time_memory: " + "; ".join(problems) + " (NaN fails too)")


def _check_state(state, shapes: list[tuple[int, ...]], device, dtype) -> list[torch.Tensor]:
    if not isinstance(state, (tuple, list)) or len(state) != 5 or any(_tensor_error("", s) for s in state):
        raise TypeError(
            "test_time_memory: initial_state must be a tuple of 5 floating tensors (X1, X2, C1, C2, count), "
            f"got {type(state).__name__}"
        )
    got = [tuple(s.shape) for s in state]
    if got != shapes:
        raise ValueError(
            f"test_time_memory: initial_state (X1, X2, C1, C2, count) must have shapes {shapes}, got {got}"
        )
    return [s.to(device=device, dtype=dtype) for s in state]


def _load_reference():
    from .reference import test_time_memory as kernel

    return kernel


def _load_torch():
    from .torch_impl import test_time_memory as kernel

    return kernel


def _load_triton():
    from .triton_impl import test_time_memory as kernel

    return kernel


def _triton_input_check(*validated_args):
    from .triton_impl import unsupported_reason

    return unsupported_reason(*validated_args)


def _result(output: tuple, arguments: dict) -> tuple:
    """Outputs in the values' dtype; the state back to offsets from the initial memory."""
    outputs, (x1, x2, c1, c2, count) = output
    w1, w2 = (w.to(x1.dtype) for w in arguments["memory"])
    return outputs.to(arguments["v"].dtype), (x1 - w1, x2 - w2, c1 - w1, c2 - w2, count)


def _example(variant: str, memory_chunk: int, retrieval: str = "dual_form", memory_scale: float = 0.5, **options):
    """A factory of random arguments: H = 2 heads, D = 8, E = 16, Yaad's delta on both sides of the errors' norms, a
    state part-way into a chunk. Memora's positive weights average their inputs, so the layer norm divides by a small
    spread: its log-weights start wide (`memory_scale`) to keep the example well conditioned."""

    def factory(batch: int, length: int, dtype: torch.dtype, generator: torch.Generator) -> dict:
        def rand(*shape, low=0.0, high=1.0):
            return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)

        def randn(*shape, scale=1.0):
            return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

        def unit(x):  # l2-normalised, as the layer makes queries and keys: the inner steps then stay stable
            return x / x.norm(dim=-1, keepdim=True)

        gates = [rand(batch, length, 2, 1, high=0.15), rand(batch, length, 2, 1, low=0.7)]
        if variant == "yaad":  # far from the errors' norms (1 to 7) either way, so rounding does not flip a branch
            small, large = rand(batch, length, 2, 1, low=0.05, high=0.2), rand(batch, length, 2, 1, low=20, high=30)
            gates.append(torch.where(rand(batch, length, 2, 1) < 0.5, small, large))
        shapes = state_shapes(batch, 2, 8, 16)
        count = torch.tensor([(row + 1) % memory_chunk for row in range(batch)], dtype=torch.float64)
        return {
            "q": unit(randn(batch, length, 2, 8)).to(dtype),
            "k": unit(randn(batch, length, 2, 8)).to(dtype),
            "v": randn(batch, length, 2, 8).to(dtype),
            "gates": torch.cat(gates, -1).to(dtype),
            "memory": (randn(2, 8, 16, scale=memory_scale), randn(2, 16, 8, scale=memory_scale)),
            "initial_state": (*[randn(*shape, scale=0.1) for shape in shapes[:4]], count),
            "variant": variant,
            "memory_chunk": memory_chunk,
            "retrieval": retrieval,
            "eps": 0.05,  # smooth signs: with eps 1e-6 an error component near 0 flips under bfloat16 rounding
            **options,
        }

    return factory


OPERATOR = Operator(
    name="test_time_memory",
    backends={"reference": _load_reference, "torch": _load_torch, "triton": _load_triton},
    validate=_validate,
    sequences=("q", "k", "v", "gates"),
    result=_result,
    requirements={"triton": triton_unavailable_reason},
    input_checks={"triton": _triton_input_check},
    examples={
        "yaad": _example("yaad", 4),
        "yaad_exact": _example("yaad", 1),
        "moneta": _example("moneta", 4),
        "memora": _example("memora", 3, memory_scale=3.0),
        "moneta_chunk_start": _example("moneta", 4, "chunk_start", bias_power=2.5, retention_power=3.0),
    },
)


def test_time_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: torch.Tensor,
    memory: tuple[torch.Tensor, torch.Tensor],
    initial_state: tuple[torch.Tensor, ...] | None = None,
    mask: torch.Tensor | None = None,
    variant: str = "yaad",
    memory_chunk: int = 16,
    retrieval: str = "dual_form",
    bias_power: float = 3.0,
    retention_power: float = 4.0,
    memora_scale: float = 1.0,
    eps: float = 1e-6,
    *,
    resets: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run the test-time memory; see the module docstring. `backend`: None/"auto" or a name."""
    return OPERATOR(
        q,
        k,
        v,
        gates,
        memory,
        initial_state,
        mask,
        variant,
        memory_chunk,
        retrieval,
        bias_power,
        retention_power,
        memora_scale,
        eps,
        backend=backend,
        resets=resets,
    )
