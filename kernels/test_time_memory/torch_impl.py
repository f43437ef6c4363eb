"""Chunk-parallel PyTorch backend of `test_time_memory`: mini-batch test-time gradient descent in closed form.

Each row's real tokens are laid out from its position in the current chunk (`count`), so chunk boundaries fall
where the recurrence has them whatever the padding; the chunks then run in order, each in one batched step:

1. the memory at the chunk-start weights ``W = gradient_weights(C)`` on the chunk's keys, and the inner
   gradients of every token by hand: the output gradient g_i, back through the layer norm to ``gu_i [D]`` and
   through ``W1`` and the GELU to ``dz_i [E]``, so ``G1_i = gu_i hbar_i^T`` and ``G2_i = dz_i k_i^T`` with
   ``hbar_i = gelu(W2 k_i)``;
2. the decay mask ``Gamma_ti = eta_i beta_t / beta_i`` (i <= t, ``beta_t`` the product of alpha in the chunk,
   from a cumulative sum of logs), so that ``X_t = beta_t X_in - sum_i Gamma_ti G_i``;
3. per-token outputs without materialising ``X_t`` (the dual form, Yaad and Moneta): ``W2_t q_t = beta_t X2_in
   q_t - ((Q K^T) * Gamma) dZ``, then ``h_t = gelu(.)`` and ``W1_t h_t = beta_t X1_in h_t - ((H Hbar^T) *
   Gamma) GU``, both times Moneta's chunk-start normaliser. Memora reads ``c softmax(X_t)``, which is not linear
   in X, so its per-token log-weights are materialised (``[chunk, D, E]`` per head). "chunk_start" retrieval
   reads every token with W;
4. the chunk's final accumulators ``beta_b X_in - sum_i Gamma_bi G_i``, which become the next chunk's start.

Work per chunk O(b^2 (D + E) + b D E) per head (Memora's reads O(b^2 D E)). With gradients enabled each chunk
is checkpointed, so training keeps only the chunk-boundary states and recomputes a chunk in the backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .memory import LN_EPS, gradient_weights, layer_norm, mlp, moneta_scale, output_gradient

__all__ = ["Layout", "test_time_memory"]


def gelu_derivative(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)


def layer_norm_backward(u: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient in `u` `[..., D]` of ``grad . layer_norm(u)``."""
    centred = u - u.mean(-1, keepdim=True)
    inverse_std = (centred.square().mean(-1, keepdim=True) + LN_EPS).rsqrt()
    normed = centred * inverse_std
    return inverse_std * (grad - grad.mean(-1, keepdim=True) - normed * (grad * normed).mean(-1, keepdim=True))


def _chunk(q, k, v, gates, x1, x2, c1, c2, options):
    """One chunk: q, k, v `[B, H, b, D]`, gates `[B, H, b, G]`, accumulators `x1, c1 [B, H, D, E]`,
    `x2, c2 [B, H, E, D]` -> (outputs `[B, H, b, D]`, x1, x2 after the chunk)."""
    variant, retrieval, bias_power, retention_power, memora_scale, eps = options
    w1, w2 = (gradient_weights(variant, c, memora_scale, retention_power, eps) for c in (c1, c2))
    z = k @ w2.transpose(-1, -2)
    hbar = F.gelu(z)
    u = hbar @ w1.transpose(-1, -2)
    error = k + layer_norm(u) - v
    delta = gates[..., 2] if variant == "yaad" else None
    gu = layer_norm_backward(u, output_gradient(variant, error, delta, bias_power, eps))
    dz = (gu @ w1) * gelu_derivative(z)

    log_beta = gates[..., 1].log().cumsum(-1)  # [B, H, b]
    steps = q.shape[2]
    causal = torch.ones(steps, steps, dtype=torch.bool, device=q.device).tril()
    gamma = torch.where(causal, (log_beta[..., :, None] - log_beta[..., None, :]).clamp(max=0).exp(), 0)
    gamma = gamma * gates[..., None, :, 0]  # [B, H, t, i]
    beta = log_beta.exp()[..., None]  # [B, H, b, 1]

    if retrieval == "chunk_start":
        outputs = mlp(w1, w2, q)
    elif variant == "memora":
        log_w2 = beta[..., None] * x2[:, :, None] - torch.einsum("bhti,bhie,bhid->bhted", gamma, dz, k)
        hidden = F.gelu(torch.einsum("bhted,bhtd->bhte", memora_scale * torch.softmax(log_w2, -1), q))
        log_w1 = beta[..., None] * x1[:, :, None] - torch.einsum("bhti,bhid,bhie->bhtde", gamma, gu, hbar)
        outputs = q + layer_norm(torch.einsum("bhtde,bhte->bhtd", memora_scale * torch.softmax(log_w1, -1), hidden))
    else:
        scale1, scale2 = (
            (moneta_scale(c, retention_power, eps) for c in (c1, c2)) if variant == "moneta" else (1.0, 1.0)
        )
        hidden = F.gelu(scale2 * (beta * (q @ x2.transpose(-1, -2)) - (gamma * (q @ k.transpose(-1, -2))) @ dz))
        read = beta * (hidden @ x1.transpose(-1, -2)) - (gamma * (hidden @ hbar.transpose(-1, -2))) @ gu
        outputs = q + layer_norm(scale1 * read)

    last, beta_last = gamma[..., -1, :, None], beta[..., -1, :, None]  # [B, H, b, 1], [B, H, 1, 1]
    new_x1 = beta_last * x1 - (last * gu).transpose(-1, -2) @ hbar
    new_x2 = beta_last * x2 - (last * dz).transpose(-1, -2) @ k
    return outputs, new_x1, new_x2


@dataclass
class Layout:
    """Each row's real tokens from its position in the current chunk on, whole chunks of `memory_chunk`: `q, k, v`
    `[B, H, L, D]` (zeros elsewhere), `gates` `[B, H, L, G]` (the identity elsewhere), `position [B, T]` where each
    real token went, `real [B, T]`, `ends [B]` one past each row's last token."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gates: torch.Tensor
    position: torch.Tensor
    real: torch.Tensor
    ends: torch.Tensor

    @classmethod
    def of(cls, q, k, v, gates, count, mask, memory_chunk: int) -> Layout:
        batch, steps = q.shape[:2]
        real = torch.ones(batch, steps, dtype=torch.bool, device=q.device) if mask is None else mask
        offset = count.round().long()
        position = offset[:, None] + real.long().cumsum(1) - 1
        ends = offset + real.long().sum(1)
        length = max(1, -(-int(ends.max()) // memory_chunk)) * memory_chunk
        target = torch.where(real, position, length)  # padding goes to a slot that is cut off

        def laid_out(x, fill):  # [B, T, H, e] -> [B, H, length, e]
            buffer = fill.expand(batch, length + 1, *x.shape[2:]).clone()
            buffer = buffer.scatter(1, target.view(batch, steps, 1, 1).expand_as(x), x)
            return buffer[:, :length].transpose(1, 2)

        identity = torch.tensor([0.0, 1.0, 1.0][: gates.shape[-1]], dtype=gates.dtype, device=gates.device)
        zero = q.new_zeros(())
        return cls(
            laid_out(q, zero), laid_out(k, zero), laid_out(v, zero), laid_out(gates, identity), position, real, ends
        )

    def restore(self, outputs: torch.Tensor) -> torch.Tensor:
        """Laid-out outputs `[B, H, L, D]` -> `[B, T, H, D]` at the tokens' own positions."""
        index = torch.where(self.real, self.position, 0)
        return outputs.transpose(1, 2).gather(
            1, index[..., None, None].expand(-1, -1, *outputs.shape[1:2], outputs.shape[-1])
        )


def test_time_memory(
    q, k, v, gates, state, mask, variant, memory_chunk, retrieval, bias_power, retention_power, memora_scale, eps
):
    """See the module docstring and `hf_seqplugins.kernels.test_time_memory` for the contract (inputs arrive
    validated, the state as full accumulators ``(X1, X2, C1, C2, count)``)."""
    x1, x2, c1, c2, count = state
    layout = Layout.of(q, k, v, gates, count, mask, memory_chunk)
    options = (variant, retrieval, bias_power, retention_power, memora_scale, eps)
    last_chunk = layout.ends // memory_chunk  # the chunk the row's next token falls in
    final_c1 = torch.where((last_chunk == 0).view(-1, 1, 1, 1), c1, 0)
    final_c2 = torch.where((last_chunk == 0).view(-1, 1, 1, 1), c2, 0)
    pieces = []
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, gates, x1, x2, c1, c2))
    for index, begin in enumerate(range(0, layout.q.shape[2], memory_chunk)):
        window = slice(begin, begin + memory_chunk)
        parts = (layout.q, layout.k, layout.v, layout.gates)
        arguments = (*(t[:, :, window] for t in parts), x1, x2, c1, c2, options)
        outputs, x1, x2 = checkpoint(_chunk, *arguments, use_reentrant=False) if train else _chunk(*arguments)
        pieces.append(outputs)
        c1, c2 = x1, x2
        here = (last_chunk == index + 1).view(-1, 1, 1, 1)
        final_c1, final_c2 = torch.where(here, x1, final_c1), torch.where(here, x2, final_c2)
    final_count = (layout.ends % memory_chunk).to(count.dtype)
    return layout.restore(torch.cat(pieces, dim=2)), (x1, x2, final_c1, final_c2, final_count)
