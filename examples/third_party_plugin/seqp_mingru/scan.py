"""The minGRU recurrence `h_t = (1 - z_t) * h_{t-1} + z_t * candidate_t`, an `hf_seqplugins.Operator`.

Shapes: gate and candidate `[B, T, D]`, initial state `[B, D]` or None, mask `[B, T]` bool or None
(False = padding: the state is carried unchanged); `resets=` `[B, T]` bool (True = a packed sequence starts:
the state is zeroed there). Returns `(h [B, T, D], final state [B, D])`, computed in float32 for half-precision
inputs. `hf-seqplugins check seqp_mingru` runs the operator conformance kit on it.
"""

from __future__ import annotations

import torch

from hf_seqplugins import Operator, compute_dtype


def reference(gate, candidate, initial_state, mask):
    """The plain loop."""
    h = initial_state
    outputs = []
    for t in range(gate.shape[1]):
        new = (1 - gate[:, t]) * h + gate[:, t] * candidate[:, t]
        h = new if mask is None else torch.where(mask[:, t, None], new, h)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


def parallel(gate, candidate, initial_state, mask):
    """All steps at once: h_t = sum_s b_s prod_{s<r<=t} a_r with a = 1 - z, b = z * candidate (and the
    initial state as step -1), each product formed in log space by `logcumsumexp`, the positive and
    negative parts of b separately, so no term exceeds its own size."""
    keep = torch.ones_like(gate, dtype=torch.bool) if mask is None else mask[..., None].expand_as(gate)
    log_a = torch.where(keep, torch.log1p(-gate), torch.zeros_like(gate))
    b = torch.where(keep, gate * candidate, torch.zeros_like(gate))
    log_a = torch.cat([torch.zeros_like(log_a[:, :1]), log_a], dim=1)
    b = torch.cat([initial_state[:, None], b], dim=1)
    log_prefix = torch.cumsum(log_a, dim=1)
    tiny = torch.finfo(b.dtype).tiny

    def part(values):
        return torch.exp(log_prefix + torch.logcumsumexp(torch.log(values.clamp_min(tiny)) - log_prefix, dim=1))

    h = part(b.clamp_min(0)) - part((-b).clamp_min(0))
    return h[:, 1:], h[:, -1]


def _load_reference():
    return reference


def _load_parallel():
    return parallel


def _validate(gate, candidate, initial_state=None, mask=None):
    if gate.shape != candidate.shape or gate.dim() != 3:
        raise ValueError(
            f"mingru_scan: gate and candidate must both be [B, T, D], got {tuple(gate.shape)} and "
            f"{tuple(candidate.shape)}"
        )
    compute = compute_dtype(gate.dtype)  # log-space products lose too much in bf16
    gate, candidate = gate.to(compute), candidate.to(compute)
    initial_state = gate.new_zeros(gate.shape[0], gate.shape[2]) if initial_state is None else initial_state.to(compute)
    if mask is not None:
        mask = mask.bool()
    return (gate, candidate, initial_state, mask), {}


def _example(batch: int, length: int, dtype: torch.dtype, generator: torch.Generator) -> dict:
    """Random inputs for the conformance kit: D = 4, gates in (0, 1), a non-zero initial state."""

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "gate": torch.sigmoid(randn(batch, length, 4)).to(dtype),
        "candidate": randn(batch, length, 4).to(dtype),
        "initial_state": randn(batch, 4).to(dtype),
    }


def _result(output, arguments):
    h, state = output
    return h.to(arguments["gate"].dtype), state


MINGRU_SCAN = Operator(
    name="mingru_scan",
    backends={"reference": _load_reference, "torch": _load_parallel},
    validate=_validate,
    sequences=("gate", "candidate"),
    result=_result,
    examples={"random": _example},
)
