"""Configuration of the joint compression + hashing model (importable without torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedrs.models.codecs import CODEC_INITS, available_codecs

__all__ = ["MODALITY_CHANNELS", "ModelConfig"]

MODALITY_CHANNELS: dict[str, int] = {"s1": 2, "s2": 12}
"""Input bands per modality: Sentinel-1 (VV, VH) and Sentinel-2 (12 bands)."""


class ModelConfig(BaseModel):
    """Architecture of :class:`fedrs.models.JointModel`.

    Attributes:
        codecs: codec name per modality (keys ``"s1"`` and/or ``"s2"``; names registered with
            ``fedrs.models.register_image_codec``: ``"hyperprior"``, ``"cheng2020-attn"``,
            ``"cheng2020-attn-ctx"`` (with the autoregressive context model)).
        codec_init: how the codecs' transforms are initialised: ``"unit"`` (variance-preserving:
            the latents of a new model are live), ``"torch"`` (PyTorch's default, under which
            they start dead), or unset: each codec's own default, ``"unit"`` for
            ``"hyperprior"`` (see :data:`fedrs.models.codecs.CODEC_INITS`).
        width: channels N of the transforms.
        latent: channels M of the latent ``y``.
        hash_bits: K, length of the binary codes (a multiple of 8).
        whitening: feature whitening (FW) of the fused embedding.
        whitening_group: features per whitening group (divides ``embedding_dim``).
        embedding_dim: dimension of the per-modality embeddings and the fused feature.
        num_classes: outputs of the classification head (19 BigEarthNet classes).
        gmm_components: Gaussians per element in the mixture conditional.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    codecs: dict[str, str] = Field(default_factory=lambda: {"s1": "hyperprior", "s2": "hyperprior"})
    codec_init: str | None = None
    width: int = Field(default=32, ge=2, le=1024)
    latent: int = Field(default=48, ge=1, le=1024)
    hash_bits: int = Field(default=64, ge=8, le=1024)
    whitening: bool = True
    whitening_group: int = Field(default=16, ge=1)
    embedding_dim: int = Field(default=128, ge=2, le=4096)
    num_classes: int = Field(default=19, ge=1)
    gmm_components: int = Field(default=3, ge=1, le=16)

    @field_validator("codecs")
    @classmethod
    def _check_codecs(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("at least one modality needs a codec")
        unknown = sorted(set(value) - set(MODALITY_CHANNELS))
        if unknown:
            raise ValueError(
                f"unknown modality {unknown[0]!r}; expected one of {sorted(MODALITY_CHANNELS)}"
            )

        names = available_codecs()
        for modality, name in value.items():
            if name not in names:
                raise ValueError(
                    f"unknown codec {name!r} for {modality}; expected one of {list(names)}"
                )
        return {m: value[m] for m in MODALITY_CHANNELS if m in value}

    @field_validator("codec_init")
    @classmethod
    def _check_init(cls, value: str | None) -> str | None:
        if value is not None and value not in CODEC_INITS:
            raise ValueError(f"unknown codec_init {value!r}; expected one of {list(CODEC_INITS)}")
        return value

    @field_validator("hash_bits")
    @classmethod
    def _check_bits(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"hash_bits must be a multiple of 8, got {value}")
        return value

    @model_validator(mode="after")
    def _check_groups(self) -> ModelConfig:
        if self.whitening and self.embedding_dim % self.whitening_group:
            raise ValueError(
                f"whitening_group {self.whitening_group} does not divide "
                f"embedding_dim {self.embedding_dim}"
            )
        return self

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities with a codec, in canonical order (s1, s2)."""
        return tuple(self.codecs)
