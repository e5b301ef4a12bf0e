"""The joint model: one learned codec per modality and a hash head on the quantised latents."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from fedrs.errors import InputError
from fedrs.models.codecs import CompressedPatch, ImageCodec, build_image_codec
from fedrs.models.config import MODALITY_CHANNELS, ModelConfig
from fedrs.models.hash_head import HashHead

__all__ = ["LOCAL_STATE_MARKERS", "JointModel"]

LOCAL_STATE_MARKERS: tuple[str, ...] = ("running_", "num_batches_tracked")
"""Substrings of state-dict keys that hold statistics rather than trained weights (the whitening
buffers: pooled from the clients' feature statistics in a federation, or kept local FedBN-style
with ``federation.statistics = "local"``)."""

Compressed = Mapping[str, Sequence[CompressedPatch | None]]


class JointModel(nn.Module):
    """Per-modality codecs (``codecs.s1``, ``codecs.s2``) and a shared hash head (``hash_head``).

    ``forward(batch)`` takes a dict with normalised ``"s1"`` (B, 2, H, W) and/or ``"s2"``
    (B, 12, H, W) tensors (a modality may be missing or None) and optional (B,) bool masks
    ``"has_s1"`` / ``"has_s2"`` (items without the modality hold filler).  It returns::

        {"x_hat": {mod: (B, C, H, W)}, "y_hat": {mod: (B, M, h, w)},
         "likelihoods": {mod: {"y": ..., "z": ...}},
         "codes": (B, K)  tanh in training, sign (+-1) at evaluation,
         "code_logits": (B, K), "logits": (B, 19), "embeddings": {mod: (B, E)},
         "fused": (B, E), "masks": {mod: (B,) bool}}

    At evaluation ``codes`` equal :meth:`hash_from_bitstreams` of :meth:`compress`'s output.
    Entropy tables are rebuilt automatically when weights change; :meth:`update` forces it.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ModelConfig()
        cfg = self.config
        options: dict[str, dict[str, int]] = {
            name: {"gmm_components": cfg.gmm_components}
            for name in ("cheng2020-attn", "cheng2020-attn-ctx")
        }
        self.codecs = nn.ModuleDict(
            {
                modality: build_image_codec(
                    name,
                    MODALITY_CHANNELS[modality],
                    width=cfg.width,
                    latent=cfg.latent,
                    init=cfg.codec_init,
                    **options.get(name, {}),
                )
                for modality, name in cfg.codecs.items()
            }
        )
        self.hash_head = HashHead(
            {modality: cfg.latent for modality in cfg.codecs},
            embedding_dim=cfg.embedding_dim,
            hash_bits=cfg.hash_bits,
            num_classes=cfg.num_classes,
            whitening=cfg.whitening,
            whitening_group=cfg.whitening_group,
        )

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities this model has a codec for."""
        return tuple(self.codecs.keys())

    def codec(self, modality: str) -> ImageCodec:
        """The codec of ``modality``."""
        if modality not in self.codecs:
            raise InputError(f"model has no codec for modality {modality!r} ({self.modalities})")
        codec: ImageCodec = self.codecs[modality]  # type: ignore[assignment]
        return codec

    def _inputs(self, batch: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        images: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        for modality in MODALITY_CHANNELS:
            x = batch.get(modality)
            if x is None:
                continue
            if modality not in self.codecs:
                raise InputError(f"batch holds {modality!r} but the model has no codec for it")
            if not isinstance(x, Tensor) or x.dim() != 4:
                raise InputError(f"batch[{modality!r}] must be a (B, C, H, W) tensor")
            images[modality] = x
            mask = batch.get(f"has_{modality}")
            masks[modality] = (
                torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
                if mask is None
                else torch.as_tensor(mask, dtype=torch.bool, device=x.device)
            )
        if not images:
            raise InputError(f"batch holds none of the modalities {self.modalities}")
        sizes = {int(x.shape[0]) for x in images.values()}
        if len(sizes) != 1:
            raise InputError(f"modalities with different batch sizes: {sorted(sizes)}")
        return images, masks

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        images, masks = self._inputs(batch)
        out: dict[str, Any] = {"x_hat": {}, "y_hat": {}, "likelihoods": {}, "masks": masks}
        for modality, x in images.items():
            result = self.codec(modality)(x)
            out["x_hat"][modality] = result["x_hat"]
            out["y_hat"][modality] = result["y_hat"]
            out["likelihoods"][modality] = result["likelihoods"]
        out.update(self.hash_head(out["y_hat"], masks))
        return out

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        if not self.training:  # already: switching walks every submodule twice
            yield
            return
        self.eval()
        try:
            yield
        finally:
            self.train()

    def update(self, force: bool = False) -> bool:
        """Rebuild the CDF tables of every codec if needed; True if any was rebuilt."""
        results = [self.codec(m).update(force=force) for m in self.modalities]
        return any(results)

    @torch.no_grad()
    def compress(self, batch: Mapping[str, Any]) -> dict[str, list[CompressedPatch]]:
        """Entropy-code each present modality of a batch: per modality, one
        :class:`CompressedPatch` per item."""
        images, _ = self._inputs(batch)
        with self._evaluating():
            return {m: self.codec(m).compress(x) for m, x in images.items()}

    def _check_compressed(self, compressed: Compressed) -> int:
        if not compressed:
            raise InputError("no compressed modalities given")
        for modality in compressed:
            self.codec(modality)
        sizes = {len(v) for v in compressed.values()}
        if len(sizes) != 1:
            raise InputError(f"modalities with different numbers of patches: {sorted(sizes)}")
        count = sizes.pop()
        if count == 0:
            raise InputError("no compressed patches given")
        return count

    @torch.no_grad()
    def decompress(self, compressed: Compressed) -> dict[str, Any]:
        """Decode bitstreams to ``{"x_hat": {mod: tensor}, "y_hat": {mod: tensor}}``."""
        self._check_compressed(compressed)
        out: dict[str, Any] = {"x_hat": {}, "y_hat": {}}
        with self._evaluating():
            for modality, patches in compressed.items():
                present = [p for p in patches if p is not None]
                if len(present) != len(patches):
                    raise InputError(f"missing {modality} patches cannot be decompressed")
                result = self.codec(modality).decompress(present)
                out["x_hat"][modality] = result["x_hat"]
                out["y_hat"][modality] = result["y_hat"]
        return out

    @torch.no_grad()
    def hash_from_bitstreams(self, compressed: Compressed) -> Tensor:
        """Binary codes (B, K) in {-1, +1} from bitstreams, by entropy decoding ``y_hat`` only.

        ``compressed[mod][i]`` may be None where item ``i`` lacks that modality; every item needs
        at least one.
        """
        count = self._check_compressed(compressed)
        device = next(self.parameters()).device
        y_hat: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        with self._evaluating():
            for modality, patches in compressed.items():
                present = [i for i, p in enumerate(patches) if p is not None]
                if not present:
                    continue
                decoded = self.codec(modality).decompress_latents(
                    [p for p in patches if p is not None]
                )
                full = decoded.new_zeros(count, *decoded.shape[1:])
                index = torch.tensor(present, dtype=torch.long, device=decoded.device)
                full[index] = decoded
                mask = torch.zeros(count, dtype=torch.bool, device=device)
                mask[index.to(device)] = True
                y_hat[modality] = full.to(device)
                masks[modality] = mask
            if not y_hat:
                raise InputError("no bitstream in any modality")
            covered = torch.stack(list(masks.values())).any(0)
            if not bool(covered.all()):
                missing = int((~covered).nonzero()[0, 0])
                raise InputError(f"item {missing} has no bitstream in any modality")
            codes: Tensor = self.hash_head(y_hat, masks)["codes"]
        return codes

    # --- parameter bookkeeping for federated learning -------------------------------------

    def parameter_groups(self) -> dict[str, list[str]]:
        """State-dict keys by owner: one group per modality (its codec and its hash-head
        encoder) and ``"shared"`` (the rest of the hash head)."""
        groups: dict[str, list[str]] = {m: [] for m in self.modalities}
        groups["shared"] = []
        for key in self.state_dict():
            owner = "shared"
            for modality in self.modalities:
                if key.startswith(f"codecs.{modality}.") or key.startswith(
                    f"hash_head.encoders.{modality}."
                ):
                    owner = modality
            groups[owner].append(key)
        return groups

    def keys_for_modalities(
        self, modalities: Iterable[str], *, include_local: bool = True
    ) -> list[str]:
        """State-dict keys a client holding ``modalities`` trains (its codecs, its hash-head
        encoders and the shared hash head), in state-dict order."""
        wanted = set(modalities)
        unknown = sorted(wanted - set(self.modalities))
        if unknown:
            raise InputError(f"model has no codec for modality {unknown[0]!r} ({self.modalities})")
        groups = self.parameter_groups()
        keys = set(groups["shared"]).union(*(groups[m] for m in wanted))
        local = set() if include_local else set(self.local_state_keys())
        return [k for k in self.state_dict() if k in keys and k not in local]

    def local_state_keys(self) -> list[str]:
        """Keys of per-client statistics (whitening and normalisation running statistics)."""
        return [k for k in self.state_dict() if any(s in k for s in LOCAL_STATE_MARKERS)]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the analysis transforms: shared by the rate-distortion and the hashing
        objectives (the parameters MGDA balances)."""
        return [p for m in self.modalities for p in self.codec(m).encoder_parameters()]

    def codec_parameters(self) -> list[nn.Parameter]:
        """All codec parameters."""
        return list(self.codecs.parameters())

    def hash_parameters(self) -> list[nn.Parameter]:
        """All hash-head parameters."""
        return list(self.hash_head.parameters())
