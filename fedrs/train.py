"""Local training and evaluation of the joint model: used by centralized runs and by clients.

No Flower here.  ``train_local`` runs the two-stage schedule's stage on some rows of a fedrs
cache: stage 1 trains the codecs on rate-distortion; stage 2 trains codecs (at a smaller learning
rate) and the hash head jointly, with PCGrad over the hashing sub-losses and MGDA between the
rate-distortion and hashing objectives on the shared analysis transforms (each switchable); a
FedProx term's gradient is added after that manipulation.  ``LocalTrainer`` is the same stage
kept across calls (one optimizer for all its epochs), e.g. for a centralized run's epochs;
with ``rate=False`` stage 1 optimises distortion alone (the warm-up before rate-distortion).
``evaluate`` measures what the product promises: mAP@k of hash codes read from real bitstreams,
bits per pixel from the bitstream sizes, and PSNR of the decoded images.  ``validate`` measures
the compression figures alone on validation rows, and :class:`KeptCheckpoint` keeps the best
model on one of them (highest PSNR, lowest bpp) across epochs or rounds.

Training runs on ``train.device`` (:func:`fedrs.devices.resolve_device`), optionally in mixed
precision (``train.amp``, :func:`mixed_precision`); ``encode_rows``, ``validate``, ``evaluate``
and ``measure_statistics`` run where the model is.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fedrs.codes import pack_codes
from fedrs.config import ExperimentConfig
from fedrs.convergence import Plateau, bootstrap_interval
from fedrs.data.archive import MODALITIES
from fedrs.data.cache import CachedArchive
from fedrs.data.transforms import denormalize, normalize, upsample_s2
from fedrs.devices import AmpMode, autocast, resolve_device, to_device
from fedrs.errors import InputError
from fedrs.losses import compute_losses, hash_losses, weighted_hash_terms
from fedrs.models import JointModel
from fedrs.models.hash_head import FeatureWhitening
from fedrs.models.statistics import Moments, apply_moments, moments_from_features, pool_moments
from fedrs.optim import GradientManipulator, GradientReport
from fedrs.pipeline import RunData
from fedrs.retrieval import (
    evaluate_retrieval,
    evaluate_retrieval_per_query,
    random_codes_evaluation,
)

PEAK = {"s2": 10000.0, "s1": 60.0}
"""PSNR peak per modality in physical units: S2 reflectance x 10000 (0..1 reflectance), S1
backscatter over a 60 dB range."""


def build_model(config: ExperimentConfig) -> JointModel:
    """The joint model of an experiment, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return JointModel(config.model)


def _seed_value(seed: int | Sequence[int]) -> int:
    values = [int(seed)] if isinstance(seed, int) else [int(s) for s in seed]
    return int(np.random.SeedSequence(values).generate_state(1, dtype=np.uint64)[0] >> 1)


def trainable_rows(
    archive: CachedArchive, rows: np.ndarray, modalities: Sequence[str]
) -> np.ndarray:
    """The rows that hold at least one of ``modalities``."""
    meta = archive.metadata
    keep = np.zeros(len(rows), dtype=bool)
    for modality in modalities:
        keep |= meta[f"has_{modality}"].to_numpy(dtype=bool)[rows]
    return np.asarray(rows)[keep]


def load_batch(
    archive: CachedArchive,
    rows: np.ndarray,
    modalities: Sequence[str],
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """A normalised batch of ``rows`` restricted to ``modalities`` (others left out), on
    ``device``: the cache's native pixels (S2 uint16 per resolution group, S1 float32) are
    copied there (through pinned memory, without blocking, for a GPU:
    :func:`fedrs.devices.to_device`), then S2 is upsampled
    (:func:`fedrs.data.transforms.upsample_s2`) and both are normalised there, with the same
    values on every device (those of ``normalize(archive[i][modality])``)."""
    target = torch.device(device)
    raw = archive.get_batch(rows, native=True)
    labels = to_device(raw["labels"], target)
    batch: dict[str, Any] = {"labels": labels, "patch_id": raw["patch_id"]}
    for modality in MODALITIES:
        has = raw[f"has_{modality}"]
        if modality in modalities and raw[modality] is not None and bool(has.any()):
            if modality == "s2":
                values = upsample_s2(raw["s2"], archive.resample, target)
            else:
                values = to_device(raw[modality], target)
            batch[modality] = normalize(values, modality)
            batch[f"has_{modality}"] = to_device(has, target)
    return batch


def iterate_batches(
    archive: CachedArchive,
    rows: np.ndarray,
    modalities: Sequence[str],
    batch_size: int,
    *,
    rng: np.random.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[dict[str, Any]]:
    """Batches of ``rows`` (shuffled when ``rng`` is given) on ``device``."""
    order = np.asarray(rows) if rng is None else rng.permutation(rows)
    for start in range(0, len(order), batch_size):
        yield load_batch(archive, order[start : start + batch_size], modalities, device)


def _float32(tree: Any) -> Any:
    """``tree`` (a model's output: tensors in dicts) with floating tensors in float32, so that
    the losses of a mixed-precision forward pass are computed in full precision."""
    if isinstance(tree, Tensor):
        return tree.float() if tree.is_floating_point() else tree
    if isinstance(tree, Mapping):
        return {k: _float32(v) for k, v in tree.items()}
    return tree


@contextlib.contextmanager
def mixed_precision(model: JointModel, device: torch.device, amp: AmpMode) -> Iterator[None]:
    """The mixed precision of a training forward pass of ``model`` (``train.amp``).

    ``"bf16"``: the codecs' transforms run under bfloat16 autocast, their entropy models'
    quantisation noise and likelihoods in float32 (:mod:`fedrs.models.entropy`), and the hash
    head (whose whitening keeps float32 running statistics) in float32 with autocast off, on
    float32 copies of the latents.  ``"off"``: nothing changes.
    """
    if amp == "off":
        yield
        return
    kind = device.type

    def full(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        torch.set_autocast_enabled(kind, False)
        return tuple(_float32(a) for a in args)

    def mixed(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        torch.set_autocast_enabled(kind, True)

    head = model.hash_head
    handles = [head.register_forward_pre_hook(full), head.register_forward_hook(mixed)]
    try:
        with autocast(device, amp):  # leaving it restores autocast's state in any case
            yield
    finally:
        for handle in handles:
            handle.remove()


def add_proximal_gradient(
    params: Iterable[tuple[str, Tensor]], reference: Mapping[str, Tensor], mu: float
) -> Tensor | None:
    """Add FedProx's gradient ``mu * (w - w_ref)`` to the ``.grad`` of each named parameter.

    The gradient of ``mu / 2 * ||w - w_ref||^2`` over the ``params`` (``(name, parameter)``
    pairs) whose name is in ``reference``.  Called after :meth:`GradientManipulator.backward`,
    so the pull towards the global model is neither weighted by MGDA nor seen by it or PCGrad.

    Returns:
        The term's value (detached), or None when ``mu <= 0`` or no parameter is covered.
    """
    if mu <= 0:
        return None
    total: Tensor | None = None
    with torch.no_grad():
        for name, param in params:
            if name not in reference or not param.requires_grad:
                continue
            diff = param.detach() - reference[name].to(param)
            grad = mu * diff
            if param.grad is None:
                param.grad = grad
            else:
                param.grad.add_(grad)
            square = diff.pow(2).sum()
            total = square if total is None else total + square
    return None if total is None else 0.5 * mu * total


class LocalTrainer:
    """One stage of local training whose state lasts across epochs.

    The optimizer (Adam's moments), the gradient manipulator and the shuffling stream live as
    long as the trainer, so ``train(2)`` and ``train(1)`` twice do the same; quantisation noise
    comes from torch's global generator, seeded when the trainer is made.  A new stage needs a new
    trainer (its own parameter groups and learning rates).

    The model is moved to ``train.device`` (:func:`fedrs.devices.resolve_device`: ``"auto"`` is
    the GPU this process sees, else the CPU) and batches follow it; with ``train.amp = "bf16"``
    the forward pass runs under bfloat16 autocast, the entropy models' likelihoods and every
    loss term in float32.  Loss terms are summed on the device and read once per :meth:`train`
    call, not once per batch.

    Args:
        modalities: what this trainer holds (default: the model's); others are never read.
        stage: 1 (codec, rate-distortion) or 2 (codec at ``codec_lr_scale`` x lr + hash head);
            in both, the codecs' factorized densities train at ``density_lr_scale`` x lr.
        seed: shuffling and quantisation-noise seed (e.g. ``(seed, round, client)``), so a run
            is reproducible wherever it executes on one device type (a GPU draws other noise).
        proximal_mu, reference: FedProx term towards ``reference`` (the received global model)
            over the trained parameters it names; its gradient is added after the gradient
            manipulation (:func:`add_proximal_gradient`).
        rate: Whether the rate term is optimised; ``False``: distortion alone (``rd`` is
            ``lmbda * distortion``; ``bpp`` is still reported), the warm-up of stage 1.
    """

    def __init__(
        self,
        model: JointModel,
        archive: CachedArchive,
        rows: np.ndarray,
        config: ExperimentConfig,
        *,
        modalities: Sequence[str] | None = None,
        stage: int,
        seed: int | Sequence[int] = 0,
        proximal_mu: float = 0.0,
        reference: Mapping[str, Tensor] | None = None,
        rate: bool = True,
    ) -> None:
        if stage not in (1, 2):
            raise InputError(f"stage must be 1 or 2, not {stage}")
        tc = config.train
        torch.set_num_threads(tc.threads)
        held = tuple(m for m in (modalities or model.modalities) if m in model.modalities)
        rows = trainable_rows(archive, np.asarray(rows), held)
        if len(rows) == 0:
            raise InputError(f"no patch with any of the modalities {held} to train on")
        seed_value = _seed_value(seed)
        self.rng = np.random.default_rng(seed_value)
        torch.manual_seed(seed_value)
        self.device = resolve_device(tc.device)
        model.to(self.device).train()

        codec_params = [p for m in held for p in model.codec(m).parameters()]
        density = {id(p) for m in held for p in model.codec(m).density_parameters()}
        density_params = [p for p in codec_params if id(p) in density]
        rest = [p for p in codec_params if id(p) not in density]
        hash_params = model.hash_parameters()
        groups = [
            {"params": rest, "lr": tc.lr if stage == 1 else tc.lr * tc.codec_lr_scale},
            {"params": density_params, "lr": tc.lr * tc.density_lr_scale},
        ]
        params = codec_params
        if stage == 2:
            groups.append({"params": hash_params, "lr": tc.lr})
            params = codec_params + hash_params
        self.model, self.archive, self.rows, self.config = model, archive, rows, config
        self.held, self.stage, self.params, self.rate = held, stage, params, rate
        self.optimizer = torch.optim.Adam(groups)
        self.manipulator = GradientManipulator(
            params,
            shared=[p for m in held for p in model.codec(m).encoder_parameters()],
            use_pcgrad=tc.pcgrad,
            use_mgda=tc.mgda,
            generator=torch.Generator().manual_seed(seed_value),
        )
        self.reference = {k: v.to(self.device) for k, v in (reference or {}).items()}
        self.proximal_mu = proximal_mu
        trained = {id(p) for p in params}
        self.proximal = [
            (name, p)
            for name, p in model.named_parameters()
            if name in self.reference and id(p) in trained
        ]

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Adam's state as named arrays (``<parameter>/exp_avg``, ``/exp_avg_sq``, ``/step``
        of shape (1,)), e.g. for a client to keep in its node state between rounds."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        out: dict[str, np.ndarray] = {}
        for param in self.params:
            for key, value in self.optimizer.state.get(param, {}).items():
                array = value.detach().cpu().numpy().copy()
                out[f"{names[id(param)]}/{key}"] = array.reshape(1) if key == "step" else array
        return out

    def load_optimizer_state(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Continue from :meth:`optimizer_state` of an earlier trainer of the same stage and
        parameters.  Arrays are checked (names, shapes, finite values) and ignored as a whole,
        returning False, when they do not fit this trainer's parameters."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        state: dict[Tensor, dict[str, Tensor]] = {}
        for param in self.params:  # a parameter that never had a gradient has no state
            name = names[id(param)]
            if f"{name}/step" not in arrays:
                continue
            entry = {}
            for key in ("exp_avg", "exp_avg_sq", "step"):
                value = arrays.get(f"{name}/{key}")
                expected = (1,) if key == "step" else tuple(param.shape)
                if value is None or tuple(value.shape) != expected:
                    return False
                if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
                    return False
                tensor = torch.as_tensor(value, dtype=torch.float32)
                entry[key] = tensor[0] if key == "step" else tensor.to(param.device)
            state[param] = entry
        if len(arrays) != 3 * len(state):  # names of parameters this trainer does not train
            return False
        for tensor, entry in state.items():
            self.optimizer.state[tensor] = entry
        return True

    def backward(self, batch: Mapping[str, Any]) -> tuple[dict[str, Tensor], GradientReport]:
        """Add one batch's gradients to ``.grad`` (zero them first): the manipulated gradients
        of the objectives, then the proximal term's.

        Returns:
            The loss terms of :func:`fedrs.losses.compute_losses` (plus ``prox``, the proximal
            term's value, when there is one) and what the manipulator did.
        """

        loss = self.config.loss
        with mixed_precision(self.model, self.device, self.config.train.amp):
            out = self.model(batch)
        if self.config.train.amp != "off":
            out = _float32(out)
        terms = compute_losses(out, batch, batch["labels"], loss, self.stage, rate=self.rate)
        rd = loss.rd_weight * terms["rd"] if self.stage == 2 else terms["rd"]
        hash_terms = weighted_hash_terms(terms, loss) if self.stage == 2 else {}
        report = self.manipulator.backward(rd, hash_terms)
        prox = add_proximal_gradient(self.proximal, self.reference, self.proximal_mu)
        if prox is not None:
            terms["prox"] = prox
        return terms, report

    def train(self, epochs: int = 1) -> dict[str, float]:
        """Train ``epochs`` more epochs (the model is left in eval mode).

        Returns:
            Mean loss terms over these epochs' batches (``loss`` is the total without the
            proximal term, ``prox`` that term when there is one), ``num-examples`` (patches per
            epoch), ``num-examples-<modality>`` (those holding each modality trained),
            ``batches``, ``train_s``, ``device-cuda`` (1 on a GPU, 0 on the CPU) and on a GPU
            ``cuda-max-memory-mb`` (the most memory torch held there during the call).
        """
        tc = self.config.train
        self.model.train()
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        sums: dict[str, Tensor] = {}
        seen = {m: torch.zeros((), dtype=torch.int64, device=self.device) for m in self.held}
        batches = 0
        started = time.perf_counter()
        for _ in range(epochs):
            for i, batch in enumerate(
                iterate_batches(
                    self.archive,
                    self.rows,
                    self.held,
                    tc.batch_size,
                    rng=self.rng,
                    device=self.device,
                )
            ):
                if tc.max_batches is not None and i >= tc.max_batches:
                    break
                self.optimizer.zero_grad(set_to_none=True)
                terms, _ = self.backward(batch)
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip)
                self.optimizer.step()
                batches += 1
                for m in self.held:
                    if f"has_{m}" in batch:
                        seen[m] += batch[f"has_{m}"].sum()
                for name, value in terms.items():
                    term = value.detach().to(torch.float64)
                    sums[name] = sums[name] + term if name in sums else term
        if batches == 0:
            raise InputError("no batch was trained (check train.max_batches and the data)")
        # the one read of the device in this call: every sum and count at once
        read = torch.stack([*sums.values(), *(n.to(torch.float64) for n in seen.values())])
        values = read.tolist()
        totals = dict(zip(sums, values, strict=False))
        counts = dict(zip(seen, values[len(sums) :], strict=True))
        metrics = {("loss" if k == "total" else k): v / batches for k, v in totals.items()}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"training diverged: {metrics}")
        rows = len(self.rows)
        per_epoch = rows if tc.max_batches is None else min(rows, tc.max_batches * tc.batch_size)
        metrics |= {
            "num-examples": float(per_epoch),
            "batches": float(batches),
            "train_s": time.perf_counter() - started,
            "device-cuda": float(on_cuda),
        }
        if on_cuda:
            metrics["cuda-max-memory-mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        # patches of each modality trained on per epoch: the weight of that modality's keys
        metrics |= {f"num-examples-{m}": n / epochs for m, n in counts.items()}
        self.model.eval()
        return metrics


def train_local(
    model: JointModel,
    archive: CachedArchive,
    rows: np.ndarray,
    config: ExperimentConfig,
    *,
    modalities: Sequence[str] | None = None,
    stage: int,
    epochs: int,
    seed: int | Sequence[int] = 0,
    proximal_mu: float = 0.0,
    reference: Mapping[str, Tensor] | None = None,
    rate: bool = True,
    optimizer_state: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on ``rows`` of ``archive`` for ``epochs`` epochs of ``stage``
    with a fresh :class:`LocalTrainer` (one optimizer for all the epochs).

    ``optimizer_state``, when given, is the Adam state to start from (a client's from its
    previous round of the same stage; ignored when it does not fit) and is replaced by the
    state reached, in place.

    Args:
        modalities: what this trainer holds (default: the model's); others are never read.
        stage: 1 (codec, rate-distortion) or 2 (codec at ``codec_lr_scale`` x lr + hash head).
        seed: shuffling and quantisation-noise seed (e.g. ``(seed, round, client)``), so a run
            is reproducible wherever it executes.
        proximal_mu, reference: FedProx term towards ``reference`` (the received global model).
        rate: Whether the rate term is optimised (``False``: distortion alone).

    Returns:
        :meth:`LocalTrainer.train`'s metrics: mean loss terms over the batches seen (``loss`` is
        the total; ``prox`` the proximal term when there is one), ``num-examples`` (patches per
        epoch), ``batches`` and ``train_s``.
    """
    trainer = LocalTrainer(
        model,
        archive,
        rows,
        config,
        modalities=modalities,
        stage=stage,
        seed=seed,
        proximal_mu=proximal_mu,
        reference=reference,
        rate=rate,
    )
    if optimizer_state is not None:
        trainer.load_optimizer_state(optimizer_state)
    metrics = trainer.train(epochs)
    if optimizer_state is not None:
        optimizer_state.clear()
        optimizer_state.update(trainer.optimizer_state())
    return metrics


def check_head_phase(epochs: int, batch_size: int) -> None:
    """Refuse a head phase of fewer than one epoch or batches of fewer than two items.

    Raises:
        InputError: ``epochs`` < 1 or ``batch_size`` < 2.
    """
    if epochs < 1 or batch_size < 2:
        raise InputError(
            f"head phase needs epochs >= 1 and batch_size >= 2, got {epochs}, {batch_size}"
        )


@dataclass(frozen=True)
class HeadLatents:
    """What the hash head reads of some rows: their quantised latents per modality (the
    rounded latents the bitstreams carry), a (N,) bool mask per modality (which rows hold it)
    and the (N, classes) multi-hot labels."""

    latents: dict[str, Tensor]
    masks: dict[str, Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: Tensor) -> HeadLatents:
        """The rows at ``index``."""
        return HeadLatents(
            {m: y[index] for m, y in self.latents.items()},
            {m: k[index] for m, k in self.masks.items()},
            self.labels[index],
        )


def head_latents(
    model: JointModel,
    archive: CachedArchive,
    rows: np.ndarray,
    config: ExperimentConfig,
    *,
    modalities: Sequence[str] | None = None,
) -> HeadLatents:
    """The latents the hash head reads of ``rows`` holding one of ``modalities`` (default: the
    model's), computed in evaluation mode in batches of ``train.batch_size``.  The model is
    left in eval mode.

    Raises:
        InputError: fewer than two of ``rows`` hold one of the modalities.
    """
    held = tuple(m for m in (modalities or model.modalities) if m in model.modalities)
    rows = trainable_rows(archive, np.asarray(rows), held)
    if len(rows) < 2:
        raise InputError(f"the head phase needs two patches with {held}, got {len(rows)}")
    device = next(model.parameters()).device
    model.eval()
    parts: list[tuple[dict[str, Tensor], dict[str, Tensor], Tensor]] = []
    with torch.no_grad():
        for batch in iterate_batches(archive, rows, held, config.train.batch_size, device=device):
            out = model(batch)
            parts.append((dict(out["y_hat"]), dict(out["masks"]), batch["labels"]))
    return HeadLatents(
        {m: torch.cat([p[0][m] for p in parts]) for m in parts[0][0]},
        {m: torch.cat([p[1][m] for p in parts]) for m in parts[0][1]},
        torch.cat([p[2] for p in parts]),
    )


def fit_hash_head(
    head: torch.nn.Module,
    data: HeadLatents,
    config: ExperimentConfig,
    *,
    epochs: int,
    batch_size: int,
    seed: int | Sequence[int] = 0,
) -> tuple[float, int]:
    """Train ``head`` (a :class:`fedrs.models.hash_head.HashHead`) on ``data`` for ``epochs``
    epochs of ``batch_size`` with a fresh Adam at ``train.lr`` on the weighted hashing terms
    (:func:`fedrs.losses.hash_losses`); a trailing batch of one item (no pair, no batch
    statistics) is skipped.  Returns the mean loss of the last epoch and the batches trained.
    The head is left in eval mode.

    Raises:
        InputError: ``epochs`` < 1 or ``batch_size`` < 2.
        FloatingPointError: the loss is not finite.
    """
    check_head_phase(epochs, batch_size)
    device = data.labels.device
    optimizer = torch.optim.Adam(head.parameters(), lr=config.train.lr)
    rng = np.random.default_rng(_seed_value(seed))
    head.train()
    batches = 0
    last = torch.zeros((), dtype=torch.float64, device=device)
    steps = 0
    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(len(data)), device=device)
        last.zero_()
        steps = 0
        for piece in order.split(batch_size):
            if len(piece) < 2:
                continue
            part = data.take(piece)
            out = head(part.latents, part.masks)
            terms = hash_losses(out, part.labels, config.loss, part.masks)
            loss = torch.stack(list(weighted_hash_terms(terms, config.loss).values())).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last += loss.detach().to(torch.float64)
            steps += 1
            batches += 1
    head.eval()
    head_loss = float(last) / max(steps, 1)
    if not math.isfinite(head_loss):
        raise FloatingPointError(f"head phase diverged: loss {head_loss}")
    return head_loss, batches


def train_hash_head(
    model: JointModel,
    archive: CachedArchive,
    rows: np.ndarray,
    config: ExperimentConfig,
    *,
    modalities: Sequence[str] | None = None,
    epochs: int,
    batch_size: int,
    seed: int | Sequence[int] = 0,
) -> dict[str, float]:
    """Train the hash head alone on the quantised latents of ``rows``, the codecs frozen.

    The latents are computed once (:func:`head_latents`); the head then trains on them
    (:func:`fit_hash_head`).  A step costs the head's forward and backward, not a codec's, so
    a client can afford many, on batches large enough for the pairwise loss and the batch
    whitening (a federated client's stage-2 head phase: ``federation.head_epochs``).

    Returns:
        ``head_loss`` (the mean weighted hashing loss of the last epoch), ``head_batches``
        and ``head_s`` (seconds, latents included).  The model is left in eval mode.
    """
    check_head_phase(epochs, batch_size)
    started = time.perf_counter()
    data = head_latents(model, archive, rows, config, modalities=modalities)
    head_loss, batches = fit_hash_head(
        model.hash_head, data, config, epochs=epochs, batch_size=batch_size, seed=seed
    )
    model.eval()
    return {
        "head_loss": head_loss,
        "head_batches": float(batches),
        "head_s": time.perf_counter() - started,
    }


def encode_rows(
    model: JointModel,
    archive: CachedArchive,
    rows: np.ndarray,
    *,
    batch_size: int = 32,
    decode: bool = False,
    modalities: Sequence[str] | None = None,
    packed: bool = False,
) -> dict[str, Any]:
    """Compress ``rows``, hash them from their bitstreams, optionally decode them, on the
    device the model is on (the range coder on the CPU).

    The rows stream through in batches: what is kept of each is its hash code, its labels
    and running sums (bits, squared errors), never its bitstreams, latents or reconstruction,
    so memory grows with the rows only by their codes and labels.

    Returns ``codes`` (N, K) +-1 (with ``packed``: ``uint8`` (N, K/8) packed bits, as
    :func:`fedrs.codes.pack_codes` makes them), ``labels`` (N, 19) (``uint8`` with
    ``packed``), ``bits`` {modality: total bits}, ``patches`` {modality: count},
    ``encode_s`` (seconds reading, compressing and hashing), and with ``decode`` ``sq_error``
    {modality: per-band sum of squared physical errors}, ``values`` {modality: count of
    values} and ``decode_s`` (seconds decoding and comparing).
    """

    held = tuple(m for m in (modalities or model.modalities) if m in model.modalities)
    started = time.perf_counter()
    model.eval()
    model.update()
    codes: list[Any] = []
    labels: list[Any] = []
    bits = dict.fromkeys(held, 0)
    patches = dict.fromkeys(held, 0)
    sq_error: dict[str, float] = dict.fromkeys(held, 0.0)
    values = dict.fromkeys(held, 0)
    decode_s = 0.0
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in iterate_batches(archive, rows, held, batch_size, device=device):
            size = len(batch["labels"])
            compressed: dict[str, list[Any]] = {}
            for modality in held:
                if modality not in batch:
                    continue
                has = batch[f"has_{modality}"]
                index = torch.nonzero(has).flatten()
                x = batch[modality][index]
                streams = model.compress({modality: x})[modality]
                full: list[Any] = [None] * size
                for k, patch in zip(index.tolist(), streams, strict=True):
                    full[k] = patch
                compressed[modality] = full
                bits[modality] += 8 * sum(p.num_bytes for p in streams)
                patches[modality] += len(streams)
                if decode:
                    decoding = time.perf_counter()
                    x_hat = model.decompress({modality: streams})["x_hat"][modality]
                    error = denormalize(x_hat, modality) - denormalize(x, modality)
                    sq_error[modality] += float(error.double().pow(2).sum())
                    values[modality] += error.numel()
                    decode_s += time.perf_counter() - decoding
            batch_codes = model.hash_from_bitstreams(compressed)
            if packed:  # 1 bit a code bit and 1 byte a label, on the host
                codes.append(pack_codes(batch_codes.cpu().numpy()))
                labels.append(batch["labels"].cpu().numpy().astype(np.uint8))
            else:
                codes.append(batch_codes)
                labels.append(batch["labels"])
    out: dict[str, Any] = {
        "codes": np.concatenate(codes) if packed else torch.cat(codes).cpu().numpy(),
        "labels": np.concatenate(labels) if packed else torch.cat(labels).cpu().numpy(),
        "bits": bits,
        "patches": patches,
        "encode_s": time.perf_counter() - started - decode_s,
    }
    if decode:
        out |= {"sq_error": sq_error, "values": values, "decode_s": decode_s}
    return out


def psnr_db(modality: str, sq_error: float, values: int) -> float | None:
    """PSNR in dB of ``values`` physical values of ``modality`` whose squared errors sum to
    ``sq_error`` (peak :data:`PEAK`); None when there are no values."""
    if not values:
        return None
    mse = sq_error / values
    return 10 * math.log10(PEAK[modality] ** 2 / max(mse, 1e-12))


def validate(
    model: JointModel,
    data: RunData | CachedArchive,
    rows: np.ndarray | None = None,
    *,
    retrieval: bool = False,
) -> dict[str, Any]:
    """Compression figures of ``model`` on ``rows`` of an archive, or on a run's validation rows
    (:attr:`fedrs.pipeline.RunData.validation_rows`) when ``data`` is a run and ``rows`` None.

    The rows are compressed to real bitstreams and decoded (:func:`encode_rows`); nothing is
    retrieved.  Besides the per-modality figures, one figure per criterion across modalities
    ranks checkpoints: ``bpp_all`` is the bits of every stream over the pixels of every coded
    image (a patch with S1 and S2 counts twice), ``psnr_all`` the mean of the per-modality PSNRs
    weighted by the patches coded in each.

    With ``retrieval`` (``data`` a run), the validation rows are also queries against the
    run's database (hash codes from their bitstreams): ``map@20`` and ``map@20_min_k_r``, the
    figures training is stopped on (``eval.patience``), never the test queries'.

    Returns:
        ``bpp`` and ``psnr`` per modality of the model (None where no row holds it),
        ``bpp_all``, ``psnr_all`` (None when nothing was coded), ``patches`` per modality,
        ``val_s``, and with ``retrieval`` ``map@20`` and ``map@20_min_k_r``.
    """
    started = time.perf_counter()
    if isinstance(data, CachedArchive):
        if rows is None:
            raise InputError("validate: rows are needed with an archive")
        archive = data
    else:
        archive = data.archive
        rows = data.validation_rows if rows is None else rows
    if len(rows) == 0:
        raise InputError("validate: no rows to validate on")
    coded = encode_rows(model, archive, rows, decode=True, packed=True)
    pixels = 120 * 120
    bpp: dict[str, float | None] = {}
    psnr: dict[str, float | None] = {}
    for modality in model.modalities:
        count = coded["patches"].get(modality, 0)
        bpp[modality] = coded["bits"][modality] / (count * pixels) if count else None
        psnr[modality] = psnr_db(
            modality, coded["sq_error"].get(modality, 0.0), coded["values"].get(modality, 0)
        )
    counts = {m: coded["patches"][m] for m in model.modalities if psnr[m] is not None}
    total = sum(counts.values())
    found: dict[str, Any] = {}
    if retrieval:
        if isinstance(data, CachedArchive):
            raise InputError("validate: retrieval needs a run's database")

        database = encode_rows(model, archive, data.database_rows, packed=True)
        figures = evaluate_retrieval(
            coded["codes"], database["codes"], coded["labels"], database["labels"], ks=(20,)
        )
        found = {k: float(figures[k]) for k in ("map@20", "map@20_min_k_r")}
    return found | {
        "bpp": bpp,
        "psnr": psnr,
        "bpp_all": sum(coded["bits"].values()) / (total * pixels) if total else None,
        "psnr_all": (
            sum(n * float(psnr[m] or 0.0) for m, n in counts.items()) / total if total else None
        ),
        "patches": dict(coded["patches"]),
        "val_s": time.perf_counter() - started,
    }


def plateau_for(config: ExperimentConfig) -> Plateau | None:
    """The stopping rule of ``config.eval`` (None when ``eval.patience`` is 0): watches the
    validation figure ``eval.plateau_metric`` each stage-2 epoch or round."""

    ev = config.eval
    if ev.patience == 0:
        return None
    return Plateau(ev.patience, ev.tolerance, higher_is_better=ev.plateau_metric != "bpp")


def plateau_value(figures: Mapping[str, Any], metric: str) -> float:
    """The figure of :func:`validate`'s result that ``eval.plateau_metric`` names (NaN where
    it was not measured: it never counts as an improvement)."""
    value = figures.get({"psnr": "psnr_all", "bpp": "bpp_all"}.get(metric, metric))
    return math.nan if value is None else float(value)


def plateau_summary(plateau: Plateau, metric: str, unit: str) -> dict[str, Any]:
    """The summary's ``plateau``: the figure watched, whether and at which stage-2 ``unit``
    (epoch or round, counted from 1) it was reached, and the best one."""
    return {
        "metric": f"val/{metric}",
        "patience": plateau.patience,
        "tolerance": plateau.tolerance,
        "reached": plateau.reached,
        f"stage2_{unit}": plateau.round,
        f"best_stage2_{unit}": plateau.best_round,
        "best": plateau.best,
    }


SELECTION_CRITERIA: dict[str, Literal["max", "min"]] = {"psnr": "max", "bpp": "min"}
"""Validation criteria a checkpoint is kept by: the highest PSNR, the lowest bpp."""


@dataclass
class KeptCheckpoint:
    """The best model seen so far on one validation criterion (:data:`SELECTION_CRITERIA`).

    ``step`` is the epoch or round the kept ``state`` comes from; a tie keeps the earlier one
    and a score that is not finite is never kept.
    """

    criterion: str
    step: int | None = None
    score: float | None = None
    state: dict[str, Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.criterion not in SELECTION_CRITERIA:
            raise InputError(
                f"unknown selection criterion {self.criterion!r}; "
                f"known: {sorted(SELECTION_CRITERIA)}"
            )

    def offer(self, step: int, score: float | None, state: Mapping[str, Tensor]) -> bool:
        """Keep a copy of ``state`` when ``score`` beats the kept one; True when it was kept."""
        if score is None or not math.isfinite(score):
            return False
        if self.score is not None:
            highest = SELECTION_CRITERIA[self.criterion] == "max"
            if not (score > self.score if highest else score < self.score):
                return False
        self.step, self.score = step, float(score)
        self.state = {k: v.detach().cpu().clone() for k, v in state.items()}
        return True

    def restore(self) -> dict[str, Tensor]:
        """The kept state.

        Raises:
            FloatingPointError: Nothing was kept (no finite score was offered).
        """
        if self.state is None:
            raise FloatingPointError(f"no model was kept: no finite validation {self.criterion}")
        return self.state

    def record(self, unit: str = "step") -> dict[str, Any]:
        """``{unit: step, "score": score}`` (JSON-able; None for both when nothing was kept)."""
        return {unit: self.step, "score": self.score}


def validation_metrics(figures: Mapping[str, Any]) -> dict[str, float]:
    """:func:`validate`'s figures as flat metrics: ``val/bpp``, ``val/psnr`` (the figures
    across modalities), ``val/bpp_<modality>``, ``val/psnr_<modality>`` and, where measured,
    ``val/map@20`` and ``val/map@20_min_k_r``."""
    flat = {f"val/{k}": float(figures[k]) for k in ("map@20", "map@20_min_k_r") if k in figures}
    for key in ("bpp", "psnr"):
        if figures.get(f"{key}_all") is not None:
            flat[f"val/{key}"] = float(figures[f"{key}_all"])
        flat |= {f"val/{key}_{m}": float(v) for m, v in figures[key].items() if v is not None}
    return flat


def evaluate(
    model: JointModel,
    data: RunData,
    config: ExperimentConfig,
) -> dict[str, Any]:
    """Retrieval and compression figures of ``model`` on a run's queries and database.

    Queries (test split) are compressed, hashed from their bitstreams and decoded; the database
    (train split) is compressed and hashed from its bitstreams.  Both stream through in batches
    keeping only packed codes, labels and running sums (:func:`encode_rows`), and faiss ranks
    the database for blocks of queries (:mod:`fedrs.retrieval.metrics`), so whole splits
    (``data.max_queries = 0``, ``data.max_database = 0``) fit in memory.  Returns, for every
    ``k`` of ``config.eval.ks`` (which always holds 20), the keys of
    :func:`fedrs.retrieval.evaluate_retrieval`: ``map@k`` (AP divided by the relevant items
    retrieved in the top k), ``map@k_min_k_r`` (AP divided by min(k, R), R = relevant items in
    the database), ``p@k``, ``r@k``, ``ndcg@k``; ``map@20_ci_low``, ``map@20_ci_high``,
    ``map@20_min_k_r_ci_low`` and ``map@20_min_k_r_ci_high``, the 95 % bootstrap interval of
    each mAP@20 over the queries (``eval.bootstrap_resamples`` resamples of the per-query APs,
    seed ``eval.random_seed``: how much the figure would move with other queries from the same
    distribution); the random-code baseline of both mAP conventions on the same data,
    ``map@k_random`` and ``map@k_min_k_r_random``; ``bpp`` and ``psnr`` per modality (None
    where absent); ``eval_queries`` and ``eval_database``, the number of queries and database
    items; ``encode_s_per_10k``, the seconds to read, compress and hash 10,000 patches
    (queries and database together), and ``decode_s_per_10k``, those to decode 10,000 of the
    queries' images; ``eval_s``.
    """

    started = time.perf_counter()
    queries = encode_rows(model, data.archive, data.query_rows, decode=True, packed=True)
    database = encode_rows(model, data.archive, data.database_rows, packed=True)
    ks = tuple(config.eval.ks)
    per_query = evaluate_retrieval_per_query(
        queries["codes"], database["codes"], queries["labels"], database["labels"], ks=ks
    )
    retrieval = {key: float(scores.mean()) for key, scores in per_query.items()}
    for key in ("map@20", "map@20_min_k_r"):
        low, high = bootstrap_interval(
            per_query[key],
            resamples=config.eval.bootstrap_resamples,
            seed=config.eval.random_seed,
        )
        retrieval |= {f"{key}_ci_low": low, f"{key}_ci_high": high}
    encoded = len(queries["labels"]) + len(database["labels"])
    encode_s = queries["encode_s"] + database["encode_s"]
    # the same codes as random_codes_baseline(..., k, bits, seed): map@20_random is unchanged
    baseline = random_codes_evaluation(
        queries["labels"],
        database["labels"],
        ks,
        bits=config.model.hash_bits,
        seed=config.eval.random_seed,
    )
    pixels = 120 * 120
    bpp: dict[str, float | None] = {}
    psnr: dict[str, float | None] = {}
    for modality in MODALITIES:
        count = queries["patches"].get(modality, 0) + database["patches"].get(modality, 0)
        total = queries["bits"].get(modality, 0) + database["bits"].get(modality, 0)
        bpp[modality] = total / (count * pixels) if count else None
        psnr[modality] = psnr_db(
            modality, queries["sq_error"].get(modality, 0.0), queries["values"].get(modality, 0)
        )
    return {
        **{k: float(v) for k, v in retrieval.items()},
        **{f"{k}_random": float(v) for k, v in baseline.items() if k.startswith("map@")},
        "eval_queries": len(queries["labels"]),
        "eval_database": len(database["labels"]),
        "encode_s_per_10k": 1e4 * encode_s / encoded,
        "decode_s_per_10k": 1e4 * queries["decode_s"] / len(queries["labels"]),
        "bpp": bpp,
        "psnr": psnr,
        "eval_s": time.perf_counter() - started,
    }


def measure_statistics(
    model: JointModel,
    archive: CachedArchive,
    rows: np.ndarray,
    config: ExperimentConfig,
    *,
    modalities: Sequence[str] | None = None,
    limit: int | None = None,
) -> dict[str, Moments]:
    """The whitening statistics of ``rows``: per whitened branch, the count, sum and sums of
    outer products of the features it sees at evaluation (:mod:`fedrs.models.statistics`),
    over the rows holding one of ``modalities`` (default: the model's), each item with the
    modalities among them that it holds; with ``limit``, over the first ``limit`` of those
    (a client measures as many patches as it reports trained on per epoch, its weight).  The
    model is left in eval mode."""

    whiten = model.hash_head.whiten
    if not isinstance(whiten, FeatureWhitening):
        return {}
    held = tuple(m for m in (modalities or model.modalities) if m in model.modalities)
    rows = trainable_rows(archive, np.asarray(rows), held)[:limit]
    model.eval()
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for batch in iterate_batches(archive, rows, held, config.train.batch_size, device=device):
            out = model(batch)
            features = model.hash_head.fused_features(out["y_hat"], out["masks"])
            parts.append({"hash_head.whiten": moments_from_features(features, whiten.group)})
    return pool_moments(parts)


def refresh_statistics(
    model: JointModel, archive: CachedArchive, rows: np.ndarray, config: ExperimentConfig
) -> None:
    """Set the whitening statistics of ``model`` to those of ``rows`` (all its modalities):
    what a federation pooling its clients' statistics computes on the union of their data."""

    apply_moments(model, measure_statistics(model, archive, rows, config))
