"""The memory MLP, its variants' weight maps and inner objectives, shared by the backends of `test_time_memory`.

Per head, with head size D and hidden size E, the memory weights are ``W1 [D, E]`` and ``W2 [E, D]`` and

    M(x) = x + LN(W1 gelu(W2 x))        (LN: parameter-free layer norm over the D channels)

The state holds, per tensor, the variant's accumulator X (the weights themselves for Yaad, the un-normalised
accumulator A for Moneta, log-weights for Memora) and C, the accumulator at the start of the current chunk.
`gradient_weights(C)` are the weights the chunk's inner gradients are taken at; token t of the chunk reads
`read_weights(X_t, C)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LN_EPS = 1e-5
VARIANTS = ("yaad", "moneta", "memora")


def layer_norm(u: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(u, u.shape[-1:], eps=LN_EPS)


def mlp(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """M(x) for weights `w1 [..., D, E]`, `w2 [..., E, D]` and inputs `x [..., N, D]` -> `[..., N, D]`."""
    hidden = F.gelu(x @ w2.transpose(-1, -2))
    return x + layer_norm(hidden @ w1.transpose(-1, -2))


def moneta_scale(a: torch.Tensor, retention_power: float, eps: float) -> torch.Tensor:
    """``1 / ||A||_q^(q - 2)`` per weight tensor `a [..., R, S]` -> `[..., 1, 1]`, with the elementwise q-norm
    ``(sum (a^2 + eps)^(q/2))^(1/q)`` (smooth at 0; exactly 1 for q = 2)."""
    if retention_power == 2:
        return torch.ones_like(a[..., :1, :1])
    norm_q = (a.square() + eps).pow(retention_power / 2).sum((-1, -2), keepdim=True)
    return norm_q.pow(-(retention_power - 2) / retention_power)


def gradient_weights(variant: str, chunk_start: torch.Tensor, memora_scale: float, retention_power: float, eps):
    """The weights a chunk's inner gradients are taken at, from the accumulator at its start `[..., R, S]`:
    Yaad C, Moneta ``C / ||C||_q^(q-2)``, Memora ``c softmax(C)`` over the last (input) axis."""
    if variant == "moneta":
        return chunk_start * moneta_scale(chunk_start, retention_power, eps)
    if variant == "memora":
        return memora_scale * torch.softmax(chunk_start, dim=-1)
    return chunk_start


def read_weights(variant: str, accumulator: torch.Tensor, chunk_start: torch.Tensor, memora_scale, power, eps):
    """The weights token t reads with, from its accumulator X_t and the chunk's start C: Yaad X_t, Moneta
    ``X_t / ||C||_q^(q-2)`` (the normaliser is refreshed at chunk boundaries), Memora ``c softmax(X_t)``."""
    if variant == "moneta":
        return accumulator * moneta_scale(chunk_start, power, eps)
    if variant == "memora":
        return memora_scale * torch.softmax(accumulator, dim=-1)
    return accumulator


def output_gradient(variant: str, error: torch.Tensor, delta: torch.Tensor | None, bias_power: float, eps: float):
    """``dl / dM(k)`` for errors ``e = M(k) - v`` `[..., D]`: Yaad (Huber) e where ``||e|| <= delta``, else
    ``delta * e / sqrt(e^2 + eps)`` (a smooth sign); Moneta (l_p) ``p e (e^2 + eps)^((p - 2) / 2)``, the smooth
    form of ``p sign(e) |e|^(p-1)`` (exact for p = 2); Memora (l_2) e. `delta` `[...]` (Yaad only)."""
    if variant == "moneta":
        if bias_power == 2:
            return 2 * error
        return bias_power * error * (error.square() + eps).pow((bias_power - 2) / 2)
    if variant == "yaad":
        inside = error.detach().norm(dim=-1, keepdim=True) <= delta[..., None]
        return torch.where(inside, error, delta[..., None] * error * (error.square() + eps).rsqrt())
    return error


def inner_loss(variant: str, error: torch.Tensor, delta: torch.Tensor | None, bias_power: float, eps: float):
    """The attentional bias summed over tokens, whose gradient in e is `output_gradient`: Yaad
    ``1/2 ||e||^2`` or ``delta sum sqrt(e^2 + eps)`` (the branch by ``||e|| <= delta``), Moneta
    ``sum (e^2 + eps)^(p/2)`` (``sum e^2`` for p = 2), Memora ``1/2 ||e||^2``."""
    if variant == "moneta":
        if bias_power == 2:
            return error.square().sum()
        return (error.square() + eps).pow(bias_power / 2).sum()
    if variant == "yaad":
        inside = error.detach().norm(dim=-1) <= delta
        huber = torch.where(inside, 0.5 * error.square().sum(-1), delta * (error.square() + eps).sqrt().sum(-1))
        return huber.sum()
    return 0.5 * error.square().sum()
