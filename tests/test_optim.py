"""PCGrad, MGDA and the gradient manipulator."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from fedrs.errors import InputError
from fedrs.optim import (
    GradientManipulator,
    mgda_weights,
    min_norm_weights_gram,
    pcgrad,
    project_conflicting,
)


def test_pcgrad_projects_two_conflicting_gradients_by_hand() -> None:
    g1 = torch.tensor([1.0, 0.0])
    g2 = torch.tensor([-1.0, 1.0])
    # g1 . g2 = -1: g1' = g1 + 0.5 g2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1)
    (combined,) = pcgrad([[g1], [g2]])
    assert combined is not None
    assert torch.allclose(combined, torch.tensor([0.5, 1.5]))
    projected, conflicts = project_conflicting(torch.stack([g1, g2]))
    assert conflicts == 2
    assert torch.allclose(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    assert float(projected[0] @ g2) >= -1e-7 and float(projected[1] @ g1) >= -1e-7


def test_pcgrad_leaves_agreeing_gradients_alone_and_handles_missing_ones() -> None:
    a = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]]), None]
    b = [torch.tensor([0.5, 0.0]), None, None]
    combined = pcgrad([a, b], reduction="mean")
    assert torch.allclose(combined[0], torch.tensor([0.75, 1.0]))  # type: ignore[arg-type]
    assert torch.allclose(combined[1], torch.tensor([[1.5]]))  # type: ignore[arg-type]
    assert combined[2] is None
    with pytest.raises(InputError):
        pcgrad([a, b[:2]])
    with pytest.raises(InputError):
        pcgrad([a], reduction="max")


def test_pcgrad_across_parameters_uses_the_full_gradient_vector() -> None:
    # conflicting as whole vectors although each parameter alone agrees in one coordinate
    g1 = [torch.tensor([1.0]), torch.tensor([0.0])]
    g2 = [torch.tensor([-1.0]), torch.tensor([1.0])]
    combined = pcgrad([g1, g2])
    assert torch.allclose(torch.cat(combined), torch.tensor([0.5, 1.5]))  # type: ignore[arg-type]


def test_mgda_weights_match_the_two_task_closed_form() -> None:
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([0.0, 2.0], dtype=torch.float64)
    alpha = mgda_weights([g1, g2])
    closed = float((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)))
    assert torch.allclose(alpha, torch.tensor([closed, 1 - closed], dtype=torch.float64))
    assert abs(closed - 0.8) < 1e-12
    # the min-norm point is orthogonal to g1 - g2
    point = alpha[0] * g1 + alpha[1] * g2
    assert abs(float(point @ (g1 - g2))) < 1e-12
    # a dominated pair clips to a vertex; equal gradients split evenly
    assert torch.allclose(mgda_weights([g1, 2 * g1]), torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(mgda_weights([g1, g1]), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_frank_wolfe_finds_the_min_norm_point_of_three_gradients() -> None:
    g = torch.tensor([[1.0, 0.2, 0.0], [-0.3, 1.0, 0.1], [0.2, -0.4, 1.0]], dtype=torch.float64)
    alpha = min_norm_weights_gram(g @ g.t(), max_iter=2000, tol=1e-12)
    assert abs(float(alpha.sum()) - 1.0) < 1e-9 and bool((alpha >= 0).all())
    best = float((alpha @ g).norm())
    steps = torch.linspace(0, 1, 101, dtype=torch.float64)
    grid = min(
        float((a * g[0] + b * g[1] + (1 - a - b) * g[2]).norm())
        for a, b in itertools.product(steps, steps)
        if a + b <= 1
    )
    assert best <= grid + 1e-6


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 4)
        self.rd_head = nn.Linear(4, 1)
        self.hash_head = nn.Linear(4, 2)

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = torch.tanh(self.shared(x))
        rd = self.rd_head(h).pow(2).mean()
        out = self.hash_head(h)
        return rd, [out[:, 0].mean(), -out[:, 0].mean() + out[:, 1].pow(2).mean()]


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_manipulator_without_surgery_equals_plain_backward() -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    plain = _Toy()
    rd, terms = plain.losses(x)
    (rd + sum(terms)).backward()  # type: ignore[operator]
    toy = _Toy()
    report = GradientManipulator(toy.parameters(), use_pcgrad=False, use_mgda=False).backward(
        *toy.losses(x)
    )
    assert report.mgda_weights is None and report.conflicts == 0
    expected, got = _grads(plain), _grads(toy)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-6), name


def test_manipulator_applies_pcgrad_and_mgda_where_they_belong() -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    toy = _Toy()
    params = list(toy.parameters())
    rd, terms = toy.losses(x)
    g_rd = torch.autograd.grad(rd, params, retain_graph=True, allow_unused=True)
    per_term = [torch.autograd.grad(t, params, retain_graph=True, allow_unused=True) for t in terms]
    g_hash = pcgrad([list(g) for g in per_term], shuffle=False)
    shared = list(toy.shared.parameters())
    flat_rd = torch.cat([g.reshape(-1) for g in g_rd[:2]])
    flat_hash = torch.cat([g.reshape(-1) for g in g_hash[:2]])  # type: ignore[union-attr]
    alpha = mgda_weights([flat_rd, flat_hash])

    manipulator = GradientManipulator(params, shared=shared, use_pcgrad=True, use_mgda=True)
    report = manipulator.backward(*toy.losses(x))
    assert report.mgda_weights is not None
    assert abs(report.mgda_weights[0] - float(alpha[0])) < 1e-9
    assert report.conflicts >= 1
    for i, p in enumerate(params):
        assert p.grad is not None
        hash_grad = g_hash[i]
        assert hash_grad is not None or 2 <= i < 4
        if i < 2:  # shared layer: MGDA combination, scaled by the number of objectives
            assert hash_grad is not None
            expected = 2.0 * (float(alpha[0]) * g_rd[i] + float(alpha[1]) * hash_grad)
        elif i < 4:  # rate-distortion head
            expected = g_rd[i]
        else:  # hash head: PCGrad of the hashing terms
            assert hash_grad is not None
            expected = hash_grad
        assert torch.allclose(p.grad, expected, atol=1e-6), i


def test_manipulator_accumulates_and_rejects_empty_objectives() -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    toy = _Toy()
    manipulator = GradientManipulator(toy.parameters(), use_pcgrad=False, use_mgda=False)
    rd, _ = toy.losses(x)
    manipulator.backward(rd)
    once = _grads(toy)
    rd, _ = toy.losses(x)
    manipulator.backward(rd)
    for name, grad in _grads(toy).items():
        assert torch.allclose(grad, 2 * once[name])
    assert toy.hash_head.weight.grad is None
    with pytest.raises(InputError):
        manipulator.backward(None, [])
