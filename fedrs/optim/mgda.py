"""MGDA: the min-norm point of the convex hull of task gradients (Sener & Koltun 2018).

The weights ``alpha`` (non-negative, summing to one) minimise ``||sum_t alpha_t g_t||``; the
combined direction decreases every task when one exists.  Two tasks have a closed form; more use
Frank-Wolfe on the Gram matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedrs.errors import InputError

__all__ = ["mgda_weights", "min_norm_weights_gram"]


def _two_task_weights(g11: Tensor, g12: Tensor, g22: Tensor) -> Tensor:
    denom = g11 - 2 * g12 + g22
    if float(denom) <= 0.0:
        alpha = torch.tensor(0.5, dtype=g11.dtype)
    else:
        alpha = ((g22 - g12) / denom).clamp(0.0, 1.0)
    return torch.stack([alpha, 1.0 - alpha])


def min_norm_weights_gram(gram: Tensor, *, max_iter: int = 250, tol: float = 1e-8) -> Tensor:
    """Min-norm weights from the Gram matrix ``G[i, j] = <g_i, g_j>`` (Frank-Wolfe)."""
    n = gram.shape[0]
    if gram.shape != (n, n) or n == 0:
        raise InputError(f"expected a square Gram matrix, got {tuple(gram.shape)}")
    gram = gram.to(torch.float64)
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    if n == 2:
        return _two_task_weights(gram[0, 0], gram[0, 1], gram[1, 1])
    alpha = torch.full((n,), 1.0 / n, dtype=torch.float64)
    for _ in range(max_iter):
        g_alpha = gram @ alpha
        t = int(torch.argmin(g_alpha))
        vv = alpha @ g_alpha
        vt = g_alpha[t]
        tt = gram[t, t]
        denom = vv - 2 * vt + tt
        gamma = float(((vv - vt) / denom).clamp(0.0, 1.0)) if float(denom) > 0 else 0.0
        step = -gamma * alpha
        step[t] += gamma
        alpha = alpha + step
        if float(step.abs().sum()) < tol:
            break
    return alpha


def mgda_weights(grads: Sequence[Tensor], *, max_iter: int = 250, tol: float = 1e-8) -> Tensor:
    """Weights (float64, summing to one) of the min-norm convex combination of ``grads``.

    Args:
        grads: one gradient per task (any shapes; flattened; equal numbers of elements).

    Returns:
        ``alpha`` of shape (tasks,).  For two tasks ``alpha_1 = clip(<g2 - g1, g2> /
        ||g1 - g2||^2, 0, 1)`` (0.5 when the gradients are equal).
    """
    if not grads:
        raise InputError("no task gradients given")
    flat = torch.stack([g.detach().reshape(-1).to(torch.float64) for g in grads])
    return min_norm_weights_gram(flat @ flat.t(), max_iter=max_iter, tol=tol)
