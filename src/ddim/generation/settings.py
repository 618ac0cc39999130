"""What determines the images of a run, sample by sample: the settings that ``ddim sample``,
``ddim eval`` and :func:`ddim.generation.generate.generate` share, checked once and turned into the
keywords of :func:`ddim.sample_iter` in one place.

:class:`SamplingSettings` holds the sampling options (validated by
:class:`ddim.sampling.options.SampleOptions` when made), the seed, and the class labels, of which
sample i takes ``class_labels[i % len(class_labels)]``
(:func:`ddim.sampling.guidance.cycled_labels`).
:class:`RunSettings` adds what a :func:`~ddim.generation.generate.generate` run needs (count, shard
and batch sizes, PNGs). Every check raises ``TypeError``/``ValueError`` naming the parameter, the
value and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..checks import check_bool, check_device, check_int, plural
from ..images import PIL_MODES
from ..loading.pretrained import Pretrained, load_pretrained
from ..maths.grids import DEFAULT_SPACING
from ..sampling.guidance import check_label_list, class_info, cycled_labels, resolve_labels
from ..sampling.model_contract import model_device_dtype
from ..sampling.noise import sample_generators
from ..sampling.options import DEFAULT_STEPS, SampleOptions
from ..sampling.sampler import SampleStep, sample_iter
from .shards import count_shards


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """The sampling settings of a run, checked when made.

    ``steps``, ``eta``, ``spacing``, ``solver`` and ``guidance_scale`` as in
    :func:`ddim.sample` (checked by :class:`~ddim.sampling.options.SampleOptions`; what needs the
    model, such as steps <= T, by :meth:`check_model`); ``seed`` >= 0: sample i draws its noise from
    the generator of (seed, i); ``class_labels``: None, one label, or a list of which sample i
    takes entry i mod its length; a label is an integer or ``"null"`` (the model's null class,
    replaced by :meth:`for_model`). Kept as a tuple.

    Raises:
        TypeError / ValueError naming the field and what is allowed.
    """

    steps: int = DEFAULT_STEPS
    eta: float = 0.0
    spacing: str = DEFAULT_SPACING
    solver: str = "ddim"
    seed: int = 0
    class_labels: tuple[int | str, ...] | None = None
    guidance_scale: float | None = None

    def __post_init__(self) -> None:
        options = SampleOptions(steps=self.steps, eta=self.eta, spacing=self.spacing,
                                solver=self.solver, guidance_scale=self.guidance_scale)
        _set(self, steps=DEFAULT_STEPS if self.steps is None else self.steps, eta=options.eta,
             spacing=options.spacing or DEFAULT_SPACING,  # None: the defaults, recorded
             seed=check_int("seed", self.seed, low=0),
             class_labels=check_label_list(self.class_labels))

    def for_model(self, model: Any) -> SamplingSettings:
        """These settings with ``"null"`` labels replaced by ``model``'s null class.

        Raises:
            ValueError: labels for a model that is not class-conditional, ``"null"`` for one
            without a null class, a label outside the model's classes.
        """
        if self.class_labels is None:
            return self
        return replace(self, class_labels=resolve_labels(self.class_labels, *class_info(model)))

    def keywords(self, lo: int, hi: int, x_T: torch.Tensor | None = None) -> dict[str, Any]:
        """The keywords of :func:`ddim.sample_iter` for samples ``lo .. hi-1`` of the run:
        their generators and labels, and ``batch_size`` = hi - lo, or ``x_T`` (hi-lo, ...)
        when given. Labels must be resolved (:meth:`for_model`)."""
        labels = (None if self.class_labels is None
                  else cycled_labels(self.class_labels, lo, hi))
        start = {"batch_size": hi - lo} if x_T is None else {"x_T": x_T}
        return dict(steps=self.steps, eta=self.eta, spacing=self.spacing, solver=self.solver,
                    class_labels=labels, guidance_scale=self.guidance_scale,
                    generator=sample_generators(self.seed, lo, hi), **start)

    def check_model(self, model: Any, device: torch.device | None = None) -> None:
        """Everything :func:`ddim.sample_iter` checks against ``model`` (steps <= T, the
        labels, the guidance scale, the device), without a model call.

        Raises:
            TypeError / ValueError naming the parameter.
        """
        # every label is checked by for_model; sample_iter checks the rest on one sample
        sample_iter(model, device=device, **self.for_model(model).keywords(0, 1))

    def sample(self, model: Any, lo: int, hi: int, *, batch_size: int,
               device: torch.device | None = None, x_T: torch.Tensor | None = None,
               on_step: Callable[[int, int, SampleStep], Any] | None = None) -> torch.Tensor:
        """Samples ``lo .. hi-1`` (hi-lo, C, ...) on the CPU, in batches of ``batch_size``
        that start at ``lo``, from ``x_T`` (hi-lo, C, ...) when given; ``on_step(a, b,
        step)`` is called after every step of the batch of samples a..b-1. The settings'
        labels must be resolved (:meth:`for_model`).

        Raises:
            the errors of :func:`ddim.sample_iter` (:class:`ddim.NonFiniteError` when the model
            returns NaN or inf).
        """
        chunks = []
        for a in range(lo, hi, batch_size):
            b = min(a + batch_size, hi)
            rows = None if x_T is None else x_T[a - lo:b - lo]
            x = None
            for step in sample_iter(model, device=device, **self.keywords(a, b, rows)):
                x = step.sample
                if on_step is not None:
                    on_step(a, b, step)
            chunks.append(x.cpu())
        return torch.cat(chunks)

    def recorded(self) -> dict[str, Any]:
        """The settings as JSON values, in the order run.json records them."""
        return dict(steps=self.steps, eta=self.eta, solver=self.solver, spacing=self.spacing,
                    seed=self.seed, class_labels=_json(self.class_labels),
                    guidance_scale=_json(self.guidance_scale))


@dataclass(frozen=True, kw_only=True)
class RunSettings(SamplingSettings):
    """The settings of a :func:`ddim.generation.generate.generate` run: those of
    :class:`SamplingSettings`, and ``num`` >= 1 samples, ``shard_size`` >= 1 samples per file,
    ``batch_size`` >= 1 per model call (at most a shard's worth is used), ``png``.

    Raises:
        TypeError / ValueError naming the field and what is allowed.
    """

    num: int
    shard_size: int
    batch_size: int
    png: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        shard_size = check_int("shard_size", self.shard_size, low=1)
        _set(self, num=check_int("num", self.num, low=1), shard_size=shard_size,
             batch_size=min(check_int("batch_size", self.batch_size, low=1), shard_size),
             png=check_bool("png", self.png))

    def check_model(self, model: Any, device: torch.device | None = None) -> None:
        """As :meth:`SamplingSettings.check_model`, and that ``png`` has 1- or 3-channel
        samples. Raises TypeError / ValueError."""
        super().check_model(model, device)
        if self.png and model.sample_shape[0] not in PIL_MODES:
            raise ValueError(f"PNG files hold 1- or 3-channel images, this model makes "
                             f"{model.sample_shape[0]} channels: ask for no PNGs")

    def recorded(self) -> dict[str, Any]:
        """The settings that run.json records, in its order."""
        return dict(num=self.num, **super().recorded(), shard_size=self.shard_size)


def _set(settings: Any, **values: Any) -> None:
    """Store checked (normalised) values in a frozen settings object."""
    for name, value in values.items():
        object.__setattr__(settings, name, value)


def _json(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return None if value is None else float(value)


# ---------------------------------------------------------------------------- the run's frame
class TooManyProcessesError(ValueError):
    """More processes than shards. :meth:`message` words it for another interface."""

    def __init__(self, world_size: int, shards: int, num: int, shard_size: int) -> None:
        self.world_size, self.shards, self.num, self.shard_size = (world_size, shards, num,
                                                                    shard_size)
        super().__init__(self.message())

    def message(self, processes: str = "world_size={} processes",
                shard_size: str = "shard_size") -> str:
        """The message, with ``processes`` (formatted with the count) and ``shard_size``
        naming the two settings."""
        shards = self.shards
        return (f"{processes.format(self.world_size)} but the run has only "
                f"{plural(shards, 'shard')} ({plural(self.num, 'sample')}, {shard_size} "
                f"{self.shard_size}): {self.world_size - shards} would idle; start at most "
                f"{plural(shards, 'process', 'processes')} or pass a smaller {shard_size}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (broadcast to other ranks)
        return type(self), (self.world_size, self.shards, self.num, self.shard_size)


def check_world_size(num: int, shard_size: int, world_size: int) -> None:
    """Refuse more processes than shards: the extra ones would idle (almost always a mistake).

    Raises:
        TooManyProcessesError (a ValueError): world_size > ceil(num / shard_size).
    """
    shards = count_shards(num, shard_size)
    if world_size > shards:
        raise TooManyProcessesError(world_size, shards, num, shard_size)


def check_out_dir(out_dir: Any) -> Path:
    """``out_dir`` as a Path, which may be missing but not a file.

    Raises:
        TypeError: not a string or path. ValueError: it exists and is not a folder.
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a string or path, got {type(out_dir).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    return out


def bundle_on_device(model: Any, device: Any) -> tuple[Pretrained, torch.device]:
    """(bundle, the device it samples on): ``model`` as given, or loaded onto ``device`` when
    it is a name or folder; ``device`` None means where the network is (else the CPU).

    Raises:
        TypeError: model is neither a bundle nor a name. ValueError: device is not where the
        bundle's network is. :class:`ddim.PretrainedError` from loading.
    """
    device = check_device("device", device)
    if isinstance(model, (str, os.PathLike)):
        model = load_pretrained(model, device=device)
    if not isinstance(model, Pretrained):
        raise TypeError("model must be a ddim.Pretrained bundle (ddim.load_pretrained) or a "
                        f"model name or folder, got {type(model).__name__}")
    model_device, _ = model_device_dtype(model)
    model_device = model_device or torch.device("cpu")
    if device is None:
        return model, model_device
    if device.type != model_device.type or (
            device.index is not None and device.index != model_device.index):
        raise ValueError(f"device={str(device)!r} but the model is on {model_device}; move it "
                         "first (bundle.to(device)) or pass the model by name")
    return model, model_device
