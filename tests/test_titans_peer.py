"""Parity of `test_time_memory` (Yaad, l2 branch) with titans-pytorch's `NeuralMemory` (PyPI `titans-pytorch`).

Titans' neural memory without momentum is Yaad's inner loop with the Huber delta out of reach: per token
``W_t = (1 - decay_t) W_{t-1} - lr_t grad mean((M(k_t) - v_t)^2)``, the gradients of a mini-batch (`batch_size`
tokens) taken at its start weights, token t reading ``M_{W_t}(q_t)``. Its memory model is pluggable, so the test
hands it ours, ``x + LN(gelu(x A) B)``; its loss is a mean over the D channels, hence our ``eta = 2 lr / D``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_seqplugins.kernels.test_time_memory import test_time_memory as memory_op

titans = pytest.importorskip("titans_pytorch", reason="titans-pytorch is in the `peers` extra")
pytestmark = pytest.mark.peers

DIM, HIDDEN = 8, 16


class OurMemory(nn.Module):
    """``M(x) = x + LN(gelu(x A) B)``, the test-time memory of `test_time_memory` in Titans' row layout."""

    def __init__(self):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(DIM, HIDDEN) / DIM**0.5)
        self.w_out = nn.Parameter(torch.randn(HIDDEN, DIM) / HIDDEN**0.5)

    def forward(self, x):
        return x + F.layer_norm(F.gelu(x @ self.w_in) @ self.w_out, (DIM,), eps=1e-5)


def titans_memory(batch_size: int):
    torch.manual_seed(0)
    return titans.NeuralMemory(
        dim=DIM,
        chunk_size=1,
        batch_size=batch_size,
        model=OurMemory(),
        momentum=False,
        pre_rmsnorm=False,
        mem_model_norm_add_residual=False,
        default_step_transform_max_lr=0.5,
    ).double()


def ours(peer, seq: torch.Tensor, memory_chunk: int, backend: str):
    """`test_time_memory` on the projections and gates of `peer` -> (outputs `[B, T, D]`, final weights)."""
    q, k, v = (layer(seq)[:, :, None] for layer in (peer.to_queries, peer.to_keys, peer.to_values))
    lr = peer.adaptive_step_transform(peer.to_adaptive_step(seq))[..., None]
    decay = peer.to_decay_factor[0](seq).sigmoid()
    gates = torch.stack([2 * lr / DIM, 1 - decay, torch.full_like(lr, 1e6)], dim=-1)
    w_in, w_out = peer.memory_model_parameters
    memory = (w_out.transpose(-1, -2), w_in.transpose(-1, -2))
    outputs, (x1, x2, *_) = memory_op(
        q, k, v, gates, memory, variant="yaad", memory_chunk=memory_chunk, backend=backend
    )
    return outputs[:, :, 0], ((memory[0] + x1)[:, 0], (memory[1] + x2)[:, 0])


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize(("steps", "batch_size"), [(12, 1), (12, 4), (10, 4)])
def test_titans_neural_memory_matches_yaad(steps, batch_size, backend):
    peer = titans_memory(batch_size)
    seq = torch.randn(2, steps, DIM, dtype=torch.float64, requires_grad=True)
    theirs, state = peer(seq)
    mine, (w1, w2) = ours(peer, seq, batch_size, backend)
    torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=1e-9)
    if steps % batch_size == 0:
        last = state.states[0]
        torch.testing.assert_close(w1, last["w_out"].transpose(-1, -2), atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(w2, last["w_in"].transpose(-1, -2), atol=1e-10, rtol=1e-9)

    probe = torch.randn_like(mine)
    wanted = [seq, *peer.parameters()]
    grads_theirs = torch.autograd.grad((theirs * probe).sum(), wanted, allow_unused=True, materialize_grads=True)
    grads_mine = torch.autograd.grad((mine * probe).sum(), wanted, allow_unused=True, materialize_grads=True)
    for (name, _), mine_grad, their_grad in zip([("seq", seq), *peer.named_parameters()], grads_mine, grads_theirs):
        torch.testing.assert_close(mine_grad, their_grad, atol=1e-9, rtol=1e-8, msg=lambda m, n=name: f"{n}: {m}")
