"""The operator conformance kit: checks any `Operator` (ours or a third party's) against its contract.

`check_operator(operator)` runs every example case of the operator (`Operator.examples`) through every backend
that can run here and returns one `Check` per (case, backend, check):

- ``reference``: outputs, final state and the gradients of every floating input (per-token sequences,
  parameters, the initial state) equal the `reference` backend's, in float64 (float32 for a backend that
  refuses float64, with a looser bound), at a length that is not a multiple of any chunk, with and without an
  initial state;
- ``chunk_size``: for operators with a `chunk_size` argument, results and gradients do not depend on it, over
  several chunks;
- ``single_step``: a prefill then one-token calls, carrying the state, equal one pass (the decoding path);
- ``split``: a split at any point with the carried state equals the whole;
- ``left_padding`` (from zeros, as a padded prompt starts) and ``left_padding_with_state``: a left-padded row
  (NaN in its padded inputs) gives the row's own outputs and final state, and gradients through the padding
  equal the reference's (zero for the padded inputs);
- ``packed`` and ``packed_with_state``: a row packed with several sequences (``resets=``) gives each
  sequence's outputs alone, and the row's final state is its last sequence's;
- ``poisoned_buffers``: outputs and final state stay finite when every `torch.empty` buffer starts as NaN;
- ``bfloat16``: bfloat16 inputs stay within `BF16_BOUND` of the float32 result, relative to its scale.

A backend that refuses some inputs (`BackendUnavailableError`) gets "n/a" with its reason for that check, not
a failure. `assert_operator_conforms` raises on any failure; `hf-seqplugins check` prints the table.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from ..core.backends import OPERATORS, BackendUnavailableError, Operator

LENGTH = 13
BATCH = 2
PADDING = 3
PACKED_LENGTHS = (4, 1, 8)  # one row of three sequences; sums to LENGTH
SPLITS = (1, 6, LENGTH - 1)
CHUNK_SIZES = (2, 5, 16)
CHUNKED_LENGTH = 37  # several chunks of each size (of 16 too), and a multiple of none
F64_BOUND = 1e-8
F32_BOUND = 2e-4
BF16_BOUND = 5e-2
PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "n/a"


@dataclass
class Check:
    """One check of one backend on one example case: `status` is "pass", "fail" or "n/a", `detail` says why."""

    operator: str
    case: str
    backend: str
    name: str
    status: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def check_operator(
    operator: Operator | str, backends: Iterable[str] | None = None, device: torch.device | str = "cpu"
) -> list[Check]:
    """Every check of `operator` (an Operator or its registered name) for each backend that can run on `device`
    (or just `backends`), over all its example cases."""
    operator = OPERATORS[operator] if isinstance(operator, str) else operator
    device = torch.device(device)
    if not operator.examples:
        return [Check(operator.name, "-", "-", "examples", FAIL, "the operator declares no `examples` to check with")]
    names = list(backends) if backends is not None else list(operator.backends)
    results = []
    for backend in names:
        reason = operator.unavailable_reason(backend, device)
        for case, factory in operator.examples.items():
            if reason is not None:
                results.append(Check(operator.name, case, backend, "all", NOT_APPLICABLE, reason))
                continue
            kit = _Kit(operator, factory, backend, device)
            for name, check in kit.checks():
                results.append(Check(operator.name, case, backend, name, *_outcome(check)))
    return results


def assert_operator_conforms(operator: Operator | str, **options) -> None:
    """Raise AssertionError listing every failed check of `operator` (see `check_operator`)."""
    failures = [c for c in check_operator(operator, **options) if c.failed]
    if failures:
        raise AssertionError("\n".join(f"{c.operator} [{c.case}] {c.backend} {c.name}: {c.detail}" for c in failures))


def _outcome(check: Callable[[], str | None]) -> tuple[str, str]:
    """(status, detail) of a check that returns None or a note on a pass, and raises on anything else."""
    try:
        note = check()
    except BackendUnavailableError as refusal:
        return NOT_APPLICABLE, str(refusal)
    except AssertionError as failure:
        return FAIL, str(failure)
    except Exception as error:  # a crash is a failure of the check, reported with its type
        return FAIL, f"{type(error).__name__}: {error}"
    return PASS, note or ""


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in an argument: itself, the items of a tuple / list, the fields of a dataclass."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in _tensors(getattr(value, f.name))]
    return []


def _map(value, function: Callable[[torch.Tensor], torch.Tensor]):
    """`value` with `function` applied to every tensor in it (the same structures as `_tensors`)."""
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map(item, function) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _map(getattr(value, f.name), function) for f in dataclasses.fields(value)}
        )
    return value


def _error(result, expected) -> float:
    """The largest absolute difference over all tensors of two results, relative to the expected scale (>= 1)."""
    got, want = _tensors(result), _tensors(expected)
    assert len(got) == len(want), f"{len(got)} result tensors, the reference has {len(want)}"
    error, scale = 0.0, 1.0
    for g, w in zip(got, want):
        assert g.shape == w.shape, f"shape {list(g.shape)}, the reference has {list(w.shape)}"
        difference = (g.to(w.dtype) - w).abs()
        if difference.numel():
            if not bool(torch.isfinite(g).all()):
                return float("inf")
            error = max(error, float(difference.max()))
            scale = max(scale, float(w.abs().max()))
    return error / scale


def _close(result, expected, bound: float, what: str) -> None:
    error = _error(result, expected)
    assert error <= bound, f"{what}: relative error {error:.3g} exceeds {bound:g}"


@contextlib.contextmanager
def _poisoned_empty() -> Iterator[None]:
    """`torch.empty` / `empty_like` / `empty_strided` return NaN-filled floating buffers inside the block."""
    originals = {name: getattr(torch, name) for name in ("empty", "empty_like", "empty_strided")}

    def poisoned(original):
        def make(*args, **kwargs):
            out = original(*args, **kwargs)
            if out.is_floating_point() or out.is_complex():
                out.fill_(float("nan"))
            return out

        return make

    for name, original in originals.items():
        setattr(torch, name, poisoned(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)


class _Kit:
    """The checks of one (operator, example case, backend)."""

    def __init__(self, operator: Operator, factory: Callable[..., dict], backend: str, device: torch.device):
        self.operator, self.factory, self.backend, self.device = operator, factory, backend, device
        self.dtype, self.bound, self.note = torch.float64, F64_BOUND, ""
        try:
            self.run(self.example(length=2))
        except BackendUnavailableError as refusal:  # e.g. a peer computing in float32 only: check it there
            self.dtype, self.bound = torch.float32, F32_BOUND
            self.note = f"float32 (refuses float64: {refusal})"
        except Exception:  # noqa: S110 - the checks themselves report what is wrong
            pass

    def checks(self) -> list[tuple[str, Callable[[], str | None]]]:
        checks = [("reference", self.matches_reference)]
        if "chunk_size" in self.operator.parameters:
            checks.append(("chunk_size", self.chunk_size_invariance))
        checks += [
            ("single_step", self.single_steps),
            ("split", self.split),
            ("left_padding", self.left_padding),
            ("left_padding_with_state", lambda: self.left_padding(initial_state=True)),
            ("packed", self.packed),
            ("packed_with_state", lambda: self.packed(initial_state=True)),
            ("poisoned_buffers", self.poisoned_buffers),
            ("bfloat16", self.bfloat16),
        ]
        return checks

    def example(self, dtype: torch.dtype | None = None, length: int = LENGTH, batch: int = BATCH) -> dict:
        arguments = self.factory(batch, length, dtype or self.dtype, torch.Generator().manual_seed(0))
        return {name: _map(value, lambda t: t.to(self.device)) for name, value in arguments.items()}

    def run(self, arguments: dict, backend: str | None = None, **extra):
        return self.operator(**arguments, **extra, backend=backend or self.backend)

    def per_token(self, arguments: dict, function: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """`arguments` with `function` applied to each per-token sequence `[B, T, ...]`."""
        return {**arguments, **{name: function(arguments[name]) for name in self.operator.sequences}}

    def rows(self, arguments: dict, rows: slice, steps: slice, state="keep") -> dict:
        """The arguments of `rows` and time `steps`; the initial state of those rows, or `state` instead."""
        part = self.per_token(arguments, lambda t: t[rows, steps])
        initial = arguments.get(self.operator.state)
        part[self.operator.state] = _map(initial, lambda t: t[rows]) if state == "keep" else state
        return part

    def matches_reference(self) -> str:
        """With the example's initial state and from the operator's zero state (None)."""
        for state in ("the example's initial state", "no initial state"):
            reference, arguments = self.example(torch.float64), self.example()
            if state == "no initial state":
                reference[self.operator.state] = arguments[self.operator.state] = None
            expected, expected_grads = self._with_gradients(reference, "reference")
            result, grads = self._with_gradients(arguments, self.backend)
            _close(result, expected, self.bound, f"outputs and final state ({state})")
            for name in expected_grads:
                _close(grads[name], expected_grads[name], self.bound, f"gradient of {name} ({state})")
        return self.note

    def _with_gradients(self, arguments: dict, backend: str, real: torch.Tensor | None = None):
        """(result, {argument: gradients}) of a random linear function of outputs and final state (of the outputs
        where `real` `[B, T]` is True only, when given: elsewhere they are unspecified)."""
        leaves = {}

        def leaf(name):
            def make(t):
                if not (t.is_floating_point() or t.is_complex()):
                    return t
                t = t.detach().clone().requires_grad_(True)
                leaves.setdefault(name, []).append(t)
                return t

            return make

        arguments = {name: _map(value, leaf(name)) for name, value in arguments.items()}
        result = self.run(arguments, backend)
        generator = torch.Generator().manual_seed(1)
        loss = 0
        for index, t in enumerate(_tensors(result)):
            if t.requires_grad:
                weight = torch.randn(t.shape, generator=generator, dtype=torch.float64).to(device=t.device)
                if real is not None and index == 0:
                    weight = torch.where(_broadcast(real, weight), weight, 0)
                loss = loss + (t.real if t.is_complex() else t).to(torch.float64).mul(weight).sum()
        inputs = [t for ts in leaves.values() for t in ts]
        grads = torch.autograd.grad(loss, inputs, allow_unused=True) if inputs and torch.is_tensor(loss) else []
        by_name, position = {}, 0
        for name, ts in leaves.items():
            by_name[name] = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads[position:], ts)]
            position += len(ts)
        return _detached(result), by_name

    def chunk_size_invariance(self) -> None:
        """At CHUNKED_LENGTH, several chunks at every chunk size (backends that round it up to a tile included),
        outputs, final state and gradients equal the reference's."""
        arguments = self.example(length=CHUNKED_LENGTH)
        expected, expected_grads = self._with_gradients(arguments, "reference")
        for chunk_size in CHUNK_SIZES:
            result, grads = self._with_gradients({**arguments, "chunk_size": chunk_size}, self.backend)
            _close(result, expected, self.bound, f"chunk_size={chunk_size}")
            for name in expected_grads:
                _close(grads[name], expected_grads[name], self.bound, f"chunk_size={chunk_size}: gradient of {name}")

    def single_steps(self) -> None:
        """Prefill LENGTH - 3 tokens, then three one-token calls carrying the state."""
        arguments = self.example()
        expected = self.run(arguments)
        prefill = LENGTH - 3
        outputs, state = self.run(self.rows(arguments, slice(None), slice(0, prefill)))
        pieces = [outputs]
        for t in range(prefill, LENGTH):
            step, state = self.run(self.rows(arguments, slice(None), slice(t, t + 1), state=state))
            pieces.append(step)
        _close((torch.cat(pieces, dim=1), state), expected, self.bound, "prefill then single steps")

    def split(self) -> None:
        arguments = self.example()
        expected = self.run(arguments)
        for at in SPLITS:
            first, state = self.run(self.rows(arguments, slice(None), slice(0, at)))
            second, final = self.run(self.rows(arguments, slice(None), slice(at, None), state=state))
            _close((torch.cat([first, second], dim=1), final), expected, self.bound, f"split at {at}")

    def left_padding(self, initial_state: bool = False) -> None:
        """Row 1 left-padded by PADDING steps of NaN: its outputs after the padding and its final state are the
        row's alone (from the same initial state: zeros, or the example's); row 0, unpadded, is unchanged."""
        arguments = self.example()
        if not initial_state:
            arguments[self.operator.state] = None
        mask = torch.ones(BATCH, LENGTH, dtype=torch.bool, device=self.device)
        mask[1, :PADDING] = False

        def garbage(t):
            t = t.clone()
            t[1, :PADDING] = float("nan")
            return t

        padded = self.per_token(arguments, garbage)
        outputs, final = self.run({**padded, self.operator.mask: mask})
        alone, alone_final = self.run(self.rows(arguments, slice(1, 2), slice(PADDING, None)), "reference")
        whole, whole_final = self.run(self.rows(arguments, slice(0, 1), slice(None)), "reference")
        _close(outputs[1:, PADDING:], alone, self.bound, "padded row's outputs")
        _close(_map(final, lambda t: t[1:]), alone_final, self.bound, "padded row's final state")
        _close((outputs[:1], _map(final, lambda t: t[:1])), (whole, whole_final), self.bound, "unpadded row")
        # Backward through padding (finite garbage there: NaN would turn 0 * NaN into NaN in any backward): the
        # reference's gradients, zero for the padded inputs, of a loss on the real positions only.
        padded = {
            **self.per_token(arguments, lambda t: torch.where(_broadcast(mask, t), t, 3.0)),
            self.operator.mask: mask,
        }
        _, grads = self._with_gradients(padded, self.backend, real=mask)
        _, expected_grads = self._with_gradients(padded, "reference", real=mask)
        for name in expected_grads:
            _close(grads[name], expected_grads[name], self.bound, f"gradient of {name} through padding")

    def packed(self, initial_state: bool = False) -> None:
        """Row 0 packs PACKED_LENGTHS sequences (the row's initial state, zeros or the example's, reaches only the
        first); row 1 is one sequence."""
        arguments = self.example()
        if not initial_state:
            arguments[self.operator.state] = None
        resets = torch.zeros(BATCH, LENGTH, dtype=torch.bool, device=self.device)
        starts = torch.tensor(PACKED_LENGTHS).cumsum(0)[:-1].tolist()
        resets[0, starts] = True
        outputs, final = self.run(arguments, resets=resets)
        begin = 0
        for index, size in enumerate(PACKED_LENGTHS):
            steps = slice(begin, begin + size)
            state = "keep" if index == 0 else None
            alone, alone_final = self.run(self.rows(arguments, slice(0, 1), steps, state=state), "reference")
            _close(
                outputs[:1, steps], alone, self.bound, f"packed sequence {index} (steps {begin}..{begin + size - 1})"
            )
            begin += size
        _close(
            _map(final, lambda t: t[:1]), alone_final, self.bound, "the packed row's final state (its last sequence's)"
        )
        whole = self.run(self.rows(arguments, slice(1, 2), slice(None)), "reference")
        _close((outputs[1:], _map(final, lambda t: t[1:])), whole, self.bound, "the unpacked row")

    def poisoned_buffers(self) -> None:
        arguments = self.example()
        with _poisoned_empty():
            result = self.run(arguments)
        broken = [list(t.shape) for t in _tensors(result) if not bool(torch.isfinite(t).all())]
        assert not broken, f"non-finite values in results of shapes {broken} (a kernel reads memory it never wrote)"

    def bfloat16(self) -> None:
        expected = self.run(self.example(torch.float32), "reference")
        _close(self.run(self.example(torch.bfloat16)), expected, BF16_BOUND, "bfloat16 against float32")


def _broadcast(flag: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A `[B, T]` flag viewed to broadcast against `like` `[B, T, ...]`."""
    return flag.view(*flag.shape, *[1] * (like.dim() - 2))


def _detached(result):
    return _map(result, lambda t: t.detach())
