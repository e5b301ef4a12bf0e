"""Hash head on the quantised latents: per-modality embeddings, fusion that accepts a missing
modality, feature whitening (FW), binary codes and multi-label class logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fedrs.errors import InputError
from fedrs.models.layers import in_fixed_chunks

__all__ = ["FeatureWhitening", "HashHead", "binarize"]


def binarize(code_logits: Tensor) -> Tensor:
    """Codes in {-1, +1}: the sign of the logits, with 0 mapped to +1."""
    return torch.where(code_logits >= 0, 1.0, -1.0).to(code_logits.dtype)


class FeatureWhitening(nn.Module):
    """Group-wise batch whitening by Newton iterations (IterNorm, Huang et al. 2019).

    Training whitens with the batch covariance (``eps``-regularised, so small batches work) and
    tracks ``running_mean`` / ``running_whitening`` (buffers); evaluation uses them, and so does
    training once :attr:`batch_statistics` is set to ``False`` (the buffers then stay as they
    are: a federated client training on batches too small to whiten with, see
    ``federation.local_whitening``).  In a federation they are set from the pooled statistics
    of all clients' features, and in a centralized run from those of all its data
    (:mod:`fedrs.models.statistics`), rather than left to the running averages.  A learned
    per-feature affine map follows.

    Args:
        features: feature dimension.
        group: features per whitening group (divides ``features``).
        iterations: Newton iterations.
        momentum: running-statistics momentum.
        eps: covariance regularisation.
    """

    running_mean: Tensor
    running_whitening: Tensor

    def __init__(
        self,
        features: int,
        *,
        group: int = 16,
        iterations: int = 5,
        momentum: float = 0.1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if features % group:
            raise InputError(f"whitening group {group} does not divide {features} features")
        self.features = features
        self.group = group
        self.groups = features // group
        self.iterations = iterations
        self.momentum = momentum
        self.eps = eps
        self.batch_statistics = True
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer(
            "running_whitening", torch.eye(group).expand(self.groups, group, group).clone()
        )

    def _whitening_matrix(self, centred: Tensor) -> Tensor:
        """(G, g, g) whitening matrices of centred features (G, g, B)."""
        batch = centred.shape[-1]
        return self.whitening_from_covariance(centred @ centred.transpose(1, 2) / batch)

    def whitening_from_covariance(self, covariance: Tensor) -> Tensor:
        """(G, g, g) whitening matrices of (G, g, g) group covariances: ``eps``-regularised,
        trace-normalised Newton iterations, exactly as training whitens a batch (so statistics
        pooled over clients whiten as one batch of their union would)."""
        eye = torch.eye(self.group, dtype=covariance.dtype, device=covariance.device)
        sigma = self.eps * eye + covariance
        trace = sigma.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-12)[:, None, None]
        sigma_n = sigma / trace
        p = eye.expand_as(sigma)
        for _ in range(self.iterations):
            p = 0.5 * (3.0 * p - p @ p @ p @ sigma_n)
        return p / trace.sqrt()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise InputError(f"expected (B, {self.features}) features, got {tuple(x.shape)}")
        if self.training and self.batch_statistics and x.shape[0] > 1:
            mean = x.mean(0)
            centred = (x - mean).t().reshape(self.groups, self.group, -1)
            wm = self._whitening_matrix(centred)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_whitening.lerp_(wm.detach(), self.momentum)
        else:
            mean = self.running_mean
            centred = (x - mean).t().reshape(self.groups, self.group, -1)
            wm = self.running_whitening
        out = (wm @ centred).reshape(self.features, -1).t()
        return out * self.weight + self.bias


class HashHead(nn.Module):
    """Binary codes and class logits from the quantised latents of the available modalities.

    Per modality: 3x3 conv, ReLU, global average pooling, linear -> embedding.  Fusion: mean of the
    embeddings of the modalities available for each item.  Then optional feature whitening, an
    MLP to ``hash_bits`` code logits (tanh in training, sign at evaluation) and a linear
    classifier.

    At evaluation the batch is processed in fixed-size pieces, so codes do not depend on it.
    """

    def __init__(
        self,
        latent_channels: Mapping[str, int],
        *,
        embedding_dim: int = 128,
        hash_bits: int = 64,
        num_classes: int = 19,
        whitening: bool = True,
        whitening_group: int = 16,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.hash_bits = hash_bits
        self.encoders = nn.ModuleDict(
            {
                modality: nn.Sequential(
                    nn.Conv2d(channels, embedding_dim, 3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                    nn.Linear(embedding_dim, embedding_dim),
                )
                for modality, channels in latent_channels.items()
            }
        )
        self.whiten: nn.Module = (
            FeatureWhitening(embedding_dim, group=whitening_group) if whitening else nn.Identity()
        )
        self.hash_mlp = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim),
            nn.ReLU(inplace=True),
            nn.Linear(embedding_dim, hash_bits),
        )
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def embed(self, y_hat: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-modality embeddings (B, E)."""
        out: dict[str, Tensor] = {}
        for modality, latent in y_hat.items():
            if modality not in self.encoders:
                raise InputError(f"hash head has no encoder for modality {modality!r}")
            out[modality] = self.encoders[modality](latent)
        return out

    def _fuse(
        self, y_hat: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Per-modality embeddings and their masked mean (the features whitening sees)."""
        embeddings = self.embed(y_hat)
        total = torch.zeros_like(next(iter(embeddings.values())))
        count = total.new_zeros(total.shape[0], 1)
        for modality, embedding in embeddings.items():
            mask = masks[modality].to(embedding.dtype)[:, None]
            total = total + embedding * mask
            count = count + mask
        return embeddings, total / count.clamp_min(1.0)

    def fused_features(
        self, y_hat: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """The fused embeddings (B, E) before whitening: the features whose statistics the
        whitening uses (:mod:`fedrs.models.statistics`)."""
        return self._fuse(*self._masks(y_hat, masks))[1]

    def _forward(
        self, y_hat: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor | dict[str, Tensor]]:
        embeddings, fused = self._fuse(y_hat, masks)
        fused = self.whiten(fused)
        code_logits = self.hash_mlp(fused)
        codes = torch.tanh(code_logits) if self.training else binarize(code_logits)
        return {
            "embeddings": embeddings,
            "fused": fused,
            "code_logits": code_logits,
            "codes": codes,
            "logits": self.classifier(fused),
        }

    @staticmethod
    def _masks(
        y_hat: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None
    ) -> tuple[Mapping[str, Tensor], dict[str, Tensor]]:
        """The latents checked, and a (B,) bool mask per modality (all True where not given)."""
        if not y_hat:
            raise InputError("the hash head needs at least one modality")
        sizes = {int(t.shape[0]) for t in y_hat.values()}
        if len(sizes) != 1:
            raise InputError(f"modalities with different batch sizes: {sorted(sizes)}")
        batch = sizes.pop()
        device = next(iter(y_hat.values())).device
        full = {
            m: (
                torch.ones(batch, dtype=torch.bool, device=device)
                if masks is None or masks.get(m) is None
                else masks[m].to(device=device, dtype=torch.bool)
            )
            for m in y_hat
        }
        return y_hat, full

    def forward(
        self, y_hat: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor | dict[str, Tensor]]:
        """Codes, class logits and embeddings.

        Args:
            y_hat: quantised latents (B, M, h, w) per available modality.
            masks: optional (B,) bool per modality: which items really have it (absent items
                hold filler and are left out of the fusion).

        Returns:
            ``{"embeddings": {mod: (B, E)}, "fused": (B, E), "code_logits": (B, K),
            "codes": (B, K), "logits": (B, classes)}``.
        """
        y_hat, full = self._masks(y_hat, masks)
        if self.training:
            return self._forward(y_hat, full)
        # at evaluation an item's code must not depend on the batch it came in
        out: dict[str, Tensor | dict[str, Tensor]] = in_fixed_chunks(
            lambda piece: self._forward(piece["y_hat"], piece["masks"]),
            {"y_hat": dict(y_hat), "masks": full},
        )
        return out
