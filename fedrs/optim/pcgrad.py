"""PCGrad: gradient surgery for multi-task learning (Yu et al. 2020).

Each task gradient is projected onto the normal plane of every other task gradient it conflicts
with (negative inner product), the others taken in random order; the projected gradients are then
summed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedrs.errors import InputError

__all__ = ["flatten_grads", "pcgrad", "project_conflicting", "unflatten_grads"]


def flatten_grads(
    grads: Sequence[Sequence[Tensor | None]],
) -> tuple[Tensor, list[torch.Size | None]]:
    """Stack per-task gradient lists into a (tasks, numel) matrix.

    ``grads[t][p]`` is the gradient of task ``t`` w.r.t. parameter ``p`` (None: no gradient, read
    as zero).  Returns the matrix and the shape of each parameter (None where no task has one).
    """
    if not grads:
        raise InputError("no task gradients given")
    count = len(grads[0])
    if any(len(g) != count for g in grads):
        raise InputError("every task needs one gradient entry per parameter")
    shapes: list[torch.Size | None] = []
    likes: list[Tensor | None] = []
    for p in range(count):
        first = next((g[p] for g in grads if g[p] is not None), None)
        shapes.append(None if first is None else first.shape)
        likes.append(first)
    rows = []
    for task in grads:
        parts = [
            (g if g is not None else torch.zeros_like(like)).reshape(-1)
            for g, like in zip(task, likes, strict=True)
            if like is not None
        ]
        rows.append(torch.cat(parts) if parts else torch.zeros(0))
    return torch.stack(rows), shapes


def unflatten_grads(flat: Tensor, shapes: Sequence[torch.Size | None]) -> list[Tensor | None]:
    """Split a flat gradient back into per-parameter tensors (None where the shape is None)."""
    out: list[Tensor | None] = []
    offset = 0
    for shape in shapes:
        if shape is None:
            out.append(None)
            continue
        n = shape.numel()
        out.append(flat[offset : offset + n].view(shape))
        offset += n
    return out


def project_conflicting(
    flat: Tensor, *, generator: torch.Generator | None = None, shuffle: bool = True
) -> tuple[Tensor, int]:
    """Project each row of ``flat`` (tasks, numel) away from the rows it conflicts with.

    Returns:
        The projected rows and the number of projections made.
    """
    tasks = flat.shape[0]
    norms = (flat * flat).sum(1)
    projected = flat.clone()
    conflicts = 0
    for i in range(tasks):
        order = (
            torch.randperm(tasks, generator=generator).tolist() if shuffle else list(range(tasks))
        )
        g = projected[i]
        for j in order:
            if j == i or float(norms[j]) == 0.0:
                continue
            dot = torch.dot(g, flat[j])
            if float(dot) < 0.0:
                g = g - dot / norms[j] * flat[j]
                conflicts += 1
        projected[i] = g
    return projected, conflicts


def pcgrad(
    grads: Sequence[Sequence[Tensor | None]],
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    reduction: str = "sum",
) -> list[Tensor | None]:
    """Combine per-task gradients with PCGrad.

    Args:
        grads: ``grads[task][param]`` (None: that task does not reach the parameter).
        generator: random source of the projection order.
        shuffle: random order of the other tasks (False: task order).
        reduction: ``"sum"`` or ``"mean"`` of the projected task gradients.

    Returns:
        One combined gradient per parameter (None where no task has one).
    """
    if reduction not in ("sum", "mean"):
        raise InputError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    flat, shapes = flatten_grads(grads)
    projected, _ = project_conflicting(flat, generator=generator, shuffle=shuffle)
    combined = projected.sum(0) if reduction == "sum" else projected.mean(0)
    return unflatten_grads(combined, shapes)
