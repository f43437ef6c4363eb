"""The `test_time_memory` operator (Miras) against a textbook loop, and the self-checks of its variants. The contract
checks (backends against the reference, padding, packing, splits, decoding) are the operator kit's."""

import math

import pytest
import torch

from hf_seqplugins.kernels.test_time_memory import OPERATOR, state_shapes
from hf_seqplugins.kernels.test_time_memory import test_time_memory as run_memory
from hf_seqplugins.kernels.test_time_memory.memory import gradient_weights, mlp, read_weights
from hf_seqplugins.testing.triton_compile import assert_fits_shared_memory, run_compile_script

HEADS, DIM, HIDDEN = 2, 4, 8


def _inputs(batch=1, length=11, variant="yaad", lr=0.3, seed=0, low_alpha=0.7, dim=DIM, hidden=HIDDEN):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    def unit(x):
        return x / x.norm(dim=-1, keepdim=True)

    gates = [lr * torch.rand(batch, length, HEADS, 1, generator=generator, dtype=torch.float64)]
    gates.append(
        low_alpha + (1 - low_alpha) * torch.rand(batch, length, HEADS, 1, generator=generator, dtype=torch.float64)
    )
    if variant == "yaad":
        gates.append(torch.full((batch, length, HEADS, 1), 1.5, dtype=torch.float64))
    scale = 1.0 if variant == "memora" else 0.5
    return {
        "q": unit(randn(batch, length, HEADS, dim)),
        "k": unit(randn(batch, length, HEADS, dim)),
        "v": randn(batch, length, HEADS, dim),
        "gates": torch.cat(gates, -1),
        "memory": (scale * randn(HEADS, dim, hidden), scale * randn(HEADS, hidden, dim)),
        "variant": variant,
    }


def _textbook(arguments, memory_chunk, bias_power=3.0, retention_power=4.0, scale=1.0, eps=1e-6):
    """One row, one head at a time, written from the equations: per token, the inner loss of
    ``M(k) = k + LN(W1 gelu(W2 k))`` against v differentiated by `torch.func.grad` at the chunk-start weights, the
    variant's accumulation, and the read of q with the token's own weights."""
    variant = arguments["variant"]

    def norm(u):
        centred = u - u.mean()
        return centred / torch.sqrt(centred.square().mean() + 1e-5)

    def memory(w1, w2, x):
        return x + norm(w1 @ torch.nn.functional.gelu(w2 @ x))

    def loss(w1, w2, key, value, delta):
        e = memory(w1, w2, key) - value
        if variant == "moneta":
            return (e.square() + eps).pow(bias_power / 2).sum()
        if variant == "yaad" and e.norm() > delta:
            return delta * (e.square() + eps).sqrt().sum()
        return 0.5 * e.square().sum()

    def weights(a, start):
        if variant == "moneta":
            return a / (start.square() + eps).pow(retention_power / 2).sum().pow(
                (retention_power - 2) / retention_power
            )
        if variant == "memora":
            return scale * torch.softmax(a, -1)
        return a

    q, k, v, gates = (arguments[n][0] for n in ("q", "k", "v", "gates"))
    outputs = torch.zeros_like(q)
    for head in range(q.shape[1]):
        x1, x2 = (w[head] for w in arguments["memory"])
        for t in range(q.shape[0]):
            if t % memory_chunk == 0:
                c1, c2 = x1, x2
            delta = gates[t, head, 2] if variant == "yaad" else None
            g1, g2 = torch.func.grad(loss, argnums=(0, 1))(
                weights(c1, c1), weights(c2, c2), k[t, head], v[t, head], delta
            )
            eta, alpha = gates[t, head, 0], gates[t, head, 1]
            x1, x2 = alpha * x1 - eta * g1, alpha * x2 - eta * g2
            outputs[t, head] = memory(weights(x1, c1), weights(x2, c2), q[t, head])
    return outputs[None]


@pytest.mark.parametrize("variant", ["yaad", "moneta", "memora"])
@pytest.mark.parametrize("memory_chunk", [1, 4])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_matches_the_textbook_loop(variant, memory_chunk, backend):
    """memory_chunk 1: the exact per-token recurrence; 4: mini-batch gradients at the chunk start (11 tokens: two
    whole chunks and a part)."""
    arguments = _inputs(variant=variant)
    expected = _textbook(arguments, memory_chunk)
    outputs, _ = run_memory(**arguments, memory_chunk=memory_chunk, backend=backend)
    torch.testing.assert_close(outputs, expected, rtol=0, atol=1e-10)


def test_moneta_with_p_2_and_q_2_is_yaad_without_its_l1_branch():
    """l_2 bias and l_2 retention: both are gated gradient descent on ||e||^2 (Moneta's has twice Yaad's gradient)."""
    moneta = _inputs(variant="moneta")
    yaad = {**moneta, "variant": "yaad"}
    yaad["gates"] = torch.cat(
        [2 * moneta["gates"][..., :1], moneta["gates"][..., 1:], torch.full_like(moneta["gates"][..., :1], 1e9)], -1
    )
    for backend in ("reference", "torch"):
        a = run_memory(**moneta, memory_chunk=3, bias_power=2, retention_power=2, backend=backend)
        b = run_memory(**yaad, memory_chunk=3, backend=backend)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_yaad_switches_to_its_l1_branch_above_delta():
    """With delta below every error's norm each step moves by delta * sign(e) (smoothed), not by e."""
    small = _inputs()
    small["gates"] = small["gates"].clone()
    small["gates"][..., 2] = 1e-3
    large = {**small, "gates": small["gates"].clone()}
    large["gates"][..., 2] = 1e9
    a, _ = run_memory(**small, memory_chunk=1)
    b, _ = run_memory(**large, memory_chunk=1)
    torch.testing.assert_close(a, _textbook(small, 1))
    assert (a - b).abs().max() > 1e-2


def test_memora_weights_are_positive_rows_of_its_scale():
    log_weights = torch.randn(3, 5, 7, dtype=torch.float64) * 4
    weights = read_weights("memora", log_weights, log_weights, 2.5, 4.0, 1e-6)
    assert bool((weights > 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.full((3, 5), 2.5, dtype=torch.float64))


def test_moneta_normaliser_makes_the_q_norm_of_the_weights_the_inverse_of_the_accumulators():
    """W = A / ||A||_q^(q-2), so ||W||_q = ||A||_q^(3 - q) (up to the smoothing eps)."""
    a = torch.randn(2, 4, 6, dtype=torch.float64)
    w = gradient_weights("moneta", a, 1.0, 4.0, 1e-12)
    norm = a.abs().pow(4).sum((-1, -2)).pow(0.25)
    torch.testing.assert_close(w.abs().pow(4).sum((-1, -2)).pow(0.25), 1 / norm)


def test_chunk_start_retrieval_reads_with_the_weights_at_the_chunk_start():
    arguments = _inputs(length=8, variant="moneta")
    first, state = run_memory(**{**arguments, **_part(arguments, 0, 4)}, memory_chunk=4)
    assert float(state[4][0]) == 0  # a whole chunk: its end is the next chunk's start
    rest = _part(arguments, 4, 8)
    outputs, _ = run_memory(**{**arguments, **rest}, initial_state=state, memory_chunk=4, retrieval="chunk_start")
    start = [gradient_weights("moneta", w + c, 1.0, 4.0, 1e-6) for w, c in zip(arguments["memory"], state[2:4])]
    expected = mlp(start[0], start[1], rest["q"].transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(outputs, expected)
    dual, _ = run_memory(**{**arguments, **rest}, initial_state=state, memory_chunk=4)
    assert (dual - outputs).abs().max() > 1e-3


def _part(arguments, begin, end):
    return {name: arguments[name][:, begin:end] for name in OPERATOR.sequences}


@pytest.mark.parametrize("variant", ["yaad", "moneta", "memora"])
def test_chunked_training_is_a_first_order_approximation_in_the_learning_rate(variant):
    """Gradients at the chunk start instead of the current weights: over 64 tokens in chunks of 16 the outputs stay
    within 50 eta_max (relative to their scale) of the exact per-token recurrence for small eta, and are not equal
    to it. (Yaad without its l1 branch and Moneta without retention here: a branch flip, and Moneta's normaliser
    frozen over a chunk while retention scales A, add errors that do not vanish with eta. From eta ~ 1e-3 on, the
    layer norm inside the memory amplifies any difference along the sequence, so the gap is no longer small.)"""
    for lr in (1e-5, 1e-4):
        arguments = _inputs(length=64, lr=lr, seed=3, variant=variant, low_alpha=1.0 if variant == "moneta" else 0.98)
        if variant == "yaad":
            arguments["gates"][..., 2] = 1e9
        exact, _ = run_memory(**arguments, memory_chunk=1)
        chunked, _ = run_memory(**arguments, memory_chunk=16)
        gap = float((exact - chunked).abs().max() / exact.abs().max())
        assert lr / 100 < gap < 50 * lr, (lr, gap)


@pytest.mark.parametrize(
    "variant, retrieval", [("yaad", "dual_form"), ("moneta", "dual_form"), ("yaad", "chunk_start")]
)
def test_triton_kernel_tiles_a_memory_wider_than_one_block(variant, retrieval):
    """E = 300 at D = 8 is five tiles of 64 hidden units, the last ragged: the tiled passes (Moneta's q-norm, the
    pre-norm output, the per-tile reads and updates) equal the torch backend, state part-way into a chunk, a
    padded row."""
    pytest.importorskip("triton", reason="the triton backend needs Triton (the dev extra installs it)")
    from hf_seqplugins.kernels.test_time_memory import triton_impl

    assert triton_impl._tile_width(8, 300) == 64
    arguments = _inputs(batch=2, length=13, variant=variant, dim=8, hidden=300, lr=0.1)
    generator = torch.Generator().manual_seed(5)
    shapes = state_shapes(2, HEADS, 8, 300)
    offsets = [0.01 * torch.randn(*shape, generator=generator, dtype=torch.float64) for shape in shapes[:4]]
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, :3] = False
    options = {"memory_chunk": 4, "retrieval": retrieval, "mask": mask}
    options["initial_state"] = (*offsets, torch.tensor([1.0, 3.0], dtype=torch.float64))
    expected, expected_state = run_memory(**arguments, **options, backend="torch")
    outputs, state = run_memory(**arguments, **options, backend="triton")
    torch.testing.assert_close(outputs[mask], expected[mask], rtol=1e-9, atol=1e-9)
    for got, want in zip(state, expected_state):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


COMPILE_SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hf_seqplugins.kernels.test_time_memory import triton_impl

assert not triton_impl.INTERPRETED
kernel = triton_impl._kernel
scalars = {"bias_power": "fp32", "retention_power": "fp32", "eps": "fp32", "ln_eps": "fp32"}
shared = {}
for capability in (80, 90):
    for dtype, variant, chunk_start, dim in json.loads(sys.argv[1]):
        signature = {
            p.name: "constexpr" if p.is_constexpr
            else ("*i64" if p.name == "last_ptr" else "*" + dtype) if p.name.endswith("_ptr")
            else scalars.get(p.name, "i32")
            for p in kernel.params
        }
        constexprs = {
            "VARIANT": triton_impl.VARIANT_CODES[variant],
            "CHUNK_START": chunk_start,
            "BB": triton_impl._block(triton_impl.MAX_CHUNK),
            "BD": triton_impl._block(dim),
            "BT": triton_impl._tile_width(dim, 4 * dim),
        }
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
        assert compiled.asm["cubin"]
        shared[f"sm_{capability} {dtype} {variant} chunk_start={chunk_start} D={dim}"] = compiled.metadata.shared
kernels = sorted(name for name in dir(triton_impl) if name.endswith("_kernel"))
print(json.dumps({"kernels": kernels, "shared": shared}))
"""


def test_triton_kernel_compiles_for_sm80_and_sm90_within_shared_memory():
    """The interpreter does not run the GPU compiler: lower the kernel to cubin for sm_80 and sm_90 at its largest
    chunk and head size (E = 4 D), in a fresh interpreter without TRITON_INTERPRET, and check the shared memory it
    needs fits an A100's."""
    pytest.importorskip("triton", reason="the triton backend needs Triton (the dev extra installs it)")
    from hf_seqplugins.kernels.test_time_memory.triton_impl import MAX_HEAD_DIM

    corners = [
        ("fp32", "yaad", False, MAX_HEAD_DIM[torch.float32]),
        ("fp32", "moneta", True, MAX_HEAD_DIM[torch.float32]),
        ("fp64", "moneta", False, MAX_HEAD_DIM[torch.float64]),
    ]
    result = run_compile_script(COMPILE_SCRIPT, corners)
    assert result["kernels"] == ["_kernel"], "a kernel is missing from the compile check"
    assert len(result["shared"]) == 2 * len(corners)
    assert_fits_shared_memory(result["shared"])


def test_state_shapes_and_sizes():
    shapes = state_shapes(3, HEADS, DIM, HIDDEN)
    _, state = run_memory(**_inputs(batch=3), memory_chunk=4)
    assert [tuple(s.shape) for s in state] == shapes
    assert float(state[4][0]) == 11 % 4
    assert sum(math.prod(s[1:]) for s in shapes) == 4 * HEADS * DIM * HIDDEN + 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"variant": "titans"}, "variant must be one of"),
        ({"retrieval": "later"}, "retrieval must be one of"),
        ({"memory_chunk": 0}, "memory_chunk must be a positive int"),
        ({"retention_power": 1.5}, "retention_power must be a finite number >= 2"),
        ({"variant": "moneta"}, r"gates must be \[B, T, H, 2\]"),
        ({"gates_alpha": 1.5}, r"alpha \(gates\[..., 1\]\) must be in \(0, 1\]"),
        ({"memory_shape": (HEADS, DIM + 1, HIDDEN)}, r"memory must be \(W1 \[H, D, E\], W2 \[H, E, D\]\)"),
        ({"count": 7.0}, r"count must hold whole numbers in \[0, memory_chunk=4\)"),
        ({"k_dtype": torch.int64}, "k must be a floating-point tensor"),
    ],
)
def test_bad_input_is_named(change, message):
    arguments = _inputs()
    if "gates_alpha" in change:
        arguments["gates"] = arguments["gates"].clone()
        arguments["gates"][0, 3, 1, 1] = change.pop("gates_alpha")
    if "memory_shape" in change:
        arguments["memory"] = (torch.zeros(change.pop("memory_shape"), dtype=torch.float64), arguments["memory"][1])
    if "count" in change:
        state = [torch.zeros(s, dtype=torch.float64) for s in state_shapes(1, HEADS, DIM, HIDDEN)]
        state[4] += change.pop("count")
        arguments["initial_state"] = tuple(state)
    if "k_dtype" in change:
        arguments["k"] = arguments["k"].to(change.pop("k_dtype"))
    with pytest.raises((ValueError, TypeError), match=message):
        run_memory(**{"memory_chunk": 4, **arguments, **change})
