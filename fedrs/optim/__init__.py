"""Multi-objective optimisation: PCGrad, MGDA and a helper that sets ``.grad`` from both."""

from __future__ import annotations

from fedrs.optim.manipulator import GradientManipulator, GradientReport
from fedrs.optim.mgda import mgda_weights, min_norm_weights_gram
from fedrs.optim.pcgrad import flatten_grads, pcgrad, project_conflicting, unflatten_grads

__all__ = [
    "GradientManipulator",
    "GradientReport",
    "flatten_grads",
    "mgda_weights",
    "min_norm_weights_gram",
    "pcgrad",
    "project_conflicting",
    "unflatten_grads",
]
