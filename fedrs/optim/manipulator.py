"""Setting ``.grad`` from several objectives: PCGrad within the hashing sub-losses, MGDA between
the rate-distortion and hashing objectives on the shared parameters (the analysis transforms).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedrs.errors import InputError
from fedrs.optim.mgda import mgda_weights
from fedrs.optim.pcgrad import flatten_grads, project_conflicting, unflatten_grads

__all__ = ["GradientManipulator", "GradientReport"]


@dataclass(frozen=True)
class GradientReport:
    """What one :meth:`GradientManipulator.backward` did.

    Attributes:
        mgda_weights: (rate-distortion, hashing) weights on the shared parameters, or None.
        conflicts: number of PCGrad projections.
    """

    mgda_weights: tuple[float, float] | None
    conflicts: int


class GradientManipulator:
    """Backward pass for a rate-distortion objective plus hashing sub-losses.

    * ``use_pcgrad``: the hashing gradient is the PCGrad combination of the sub-losses'
      gradients (else the gradient of their sum);
    * ``use_mgda``: on the shared parameters the two objectives' gradients are combined with the
      MGDA min-norm weights, scaled by 2 so that equal weights give the plain sum; elsewhere the
      gradients add up.

    Gradients are accumulated into ``.grad`` as ``Tensor.backward`` does (call
    ``optimizer.zero_grad()`` first).

    Args:
        params: the parameters to train.
        shared: the parameters both objectives reach and MGDA balances (e.g.
            ``JointModel.encoder_parameters()``); None: those both gradients actually reach.
        use_pcgrad: apply PCGrad over the hashing sub-losses.
        use_mgda: apply MGDA between the two objectives.
        generator: random source of PCGrad's projection order.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        *,
        shared: Iterable[nn.Parameter] | None = None,
        use_pcgrad: bool = True,
        use_mgda: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise InputError("no trainable parameters given")
        self.shared_ids = None if shared is None else {id(p) for p in shared}
        self.use_pcgrad = use_pcgrad
        self.use_mgda = use_mgda
        self.generator = generator

    def _grads(self, loss: Tensor) -> list[Tensor | None]:
        return list(torch.autograd.grad(loss, self.params, retain_graph=True, allow_unused=True))

    def _hash_grads(self, terms: Sequence[Tensor]) -> tuple[list[Tensor | None], int]:
        if self.use_pcgrad and len(terms) > 1:
            flat, shapes = flatten_grads([self._grads(t) for t in terms])
            projected, conflicts = project_conflicting(flat, generator=self.generator)
            return unflatten_grads(projected.sum(0), shapes), conflicts
        return self._grads(torch.stack(list(terms)).sum()), 0

    def backward(
        self, rd: Tensor | None, hash_terms: Sequence[Tensor] | Mapping[str, Tensor] = ()
    ) -> GradientReport:
        """Compute the combined gradient and add it to ``.grad``.

        Args:
            rd: rate-distortion loss (scalar) or None.
            hash_terms: weighted hashing sub-losses (scalars), e.g.
                ``fedrs.losses.weighted_hash_terms(terms, config)``.
        """
        terms = list(hash_terms.values()) if isinstance(hash_terms, Mapping) else list(hash_terms)
        if rd is None and not terms:
            raise InputError("nothing to differentiate: no rate-distortion loss and no terms")
        g_rd = self._grads(rd) if rd is not None else [None] * len(self.params)
        conflicts = 0
        g_hash: list[Tensor | None] = [None] * len(self.params)
        if terms:
            g_hash, conflicts = self._hash_grads(terms)
        weights: tuple[float, float] | None = None
        shared = [
            i
            for i, p in enumerate(self.params)
            if g_rd[i] is not None
            and g_hash[i] is not None
            and (self.shared_ids is None or id(p) in self.shared_ids)
        ]
        if self.use_mgda and shared:
            first = torch.cat([g_rd[i].reshape(-1) for i in shared])  # type: ignore[union-attr]
            second = torch.cat([g_hash[i].reshape(-1) for i in shared])  # type: ignore[union-attr]
            alpha = mgda_weights([first, second])
            weights = (float(alpha[0]), float(alpha[1]))
        shared_set = set(shared)
        for i, p in enumerate(self.params):
            a, b = g_rd[i], g_hash[i]
            if weights is not None and i in shared_set and a is not None and b is not None:
                grad = 2.0 * (weights[0] * a + weights[1] * b)
            elif a is not None and b is not None:
                grad = a + b
            elif a is not None:
                grad = a
            elif b is not None:
                grad = b
            else:
                continue
            if p.grad is None:
                p.grad = grad.detach().clone()
            else:
                p.grad.add_(grad.detach())
        return GradientReport(mgda_weights=weights, conflicts=conflicts)
