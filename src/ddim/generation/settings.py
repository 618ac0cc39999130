"""What determines the images of a run, sample by sample: the settings that ``ddim sample``,
``ddim eval``, the editing commands and :func:`ddim.generation.generate.generate` share, stated
once.

:class:`SamplingSettings` holds the keywords of :func:`ddim.sample_iter` that a run uses
(``steps``, ``eta``, ``solver``, ``spacing``, ``timesteps``, ``guidance_scale``, ... : any
option that needs no tensor; each checked by :class:`ddim.sampling.options.SampleOptions`), the
seed, and the class labels, of which sample i takes ``class_labels[i % len(class_labels)]``
(:func:`ddim.sampling.guidance.cycled_labels`). Everything that reads a run's settings takes
them from here: the keywords of each batch (:meth:`SamplingSettings.keywords`), and what is
recorded (:meth:`SamplingSettings.recorded`), which run.json, the packed .npz and the command
line's output files all store. A sampling option the command line gains reaches all of them
through this one object. :class:`RunSettings` adds what a :func:`~ddim.generation.generate.generate`
run needs (count, shard and batch sizes, PNGs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..checks import check_bool, check_int
from ..images import PIL_MODES
from ..loading.calibrations import calibrated_timesteps
from ..maths.grids import CALIBRATED, DEFAULT_SPACING
from ..sampling.guidance import check_label_list, class_info, cycled_labels, resolve_labels
from ..sampling.latents import decode_samples, is_latent, output_shape
from ..sampling.noise import sample_generators
from ..sampling.options import DEFAULT_STEPS, SampleOptions, check_keywords
from ..sampling.sampler import SampleStep, sample_iter

# the keywords of sample_iter a run does not take: it sets them per batch, or they hold
# tensors or functions that no record can hold
NOT_SETTINGS = ("x_T", "shape", "batch_size", "generator", "class_labels", "model_kwargs",
                "uncond_kwargs", "callback", "progress", "device", "dtype", "max_batch_size",
                "schedule", "x_name")


class SamplingSettings:
    """The sampling settings of a run, checked when made (immutable).

    Args:
        seed: >= 0; sample i draws its noise from the generator of (seed, i)
            (:func:`ddim.sampling.noise.sample_generators`).
        class_labels: None, one label, or a list of which sample i takes entry i mod its
            length; a label is an integer or ``"null"`` (the model's null class, replaced by
            :meth:`for_model`). Kept as a tuple.
        **options: keywords of :func:`ddim.sample_iter` (``steps``, ``eta``, ``solver``,
            ``spacing``, ``timesteps``, ``guidance_scale``, ...), checked as it checks them
            (what needs the model, such as steps <= T, by :meth:`check_model`). ``steps``,
            ``eta``, ``solver`` and (without ``timesteps``) ``spacing`` are recorded with their
            defaults when not given.

    Raises:
        TypeError / ValueError naming the option and what is allowed.
    """

    __slots__ = ("options", "seed", "class_labels")

    def __init__(self, *, seed: int = 0, class_labels: Any = None, **options: Any) -> None:
        check_keywords(type(self).__name__, options, refused=NOT_SETTINGS)
        checked = SampleOptions(**options)  # every check that needs no model
        values = dict(steps=DEFAULT_STEPS, eta=0.0, solver="ddim")
        if checked.timesteps is None:
            values["spacing"] = DEFAULT_SPACING
        values.update({k: getattr(checked, k) for k in options
                       if getattr(checked, k) is not None})  # None: the option's default
        if checked.timesteps is not None and checked.steps is None:
            values["steps"] = len(checked.timesteps)
        object.__setattr__(self, "options", dict(values))
        object.__setattr__(self, "seed", check_int("seed", seed, low=0))
        object.__setattr__(self, "class_labels", check_label_list(class_labels))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.recorded() == other.recorded()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.recorded()})"

    @property
    def steps(self) -> int:
        """S, the number of model calls per sample."""
        return self.options["steps"]

    def replaced(self, **changes: Any) -> SamplingSettings:
        """These settings with ``changes`` (``seed``, ``class_labels`` or options)."""
        return type(self)(**{**self._arguments(), **changes})

    def _arguments(self) -> dict[str, Any]:
        return dict(self.options, seed=self.seed, class_labels=self.class_labels)

    def for_model(self, model: Any) -> SamplingSettings:
        """These settings for ``model``: ``"null"`` labels replaced by its null class, and
        ``spacing="calibrated"`` by the grid fitted to it (:meth:`with_calibrated_grid`), so
        that what is recorded is the grid itself.

        Raises:
            ValueError: labels for a model that is not class-conditional, ``"null"`` for one
            without a null class, a label outside the model's classes; no calibrated grid.
        """
        settings = self
        if self.options.get("spacing") == CALIBRATED:
            settings = settings.with_calibrated_grid(model)
        if settings.class_labels is None:
            return settings
        return settings.replaced(class_labels=resolve_labels(settings.class_labels,
                                                             *class_info(model)))

    def with_calibrated_grid(self, model: Any, file: str | None = None) -> SamplingSettings:
        """These settings with the grid fitted to ``model`` for their solver and steps, as
        explicit ``timesteps`` (from calibration file ``file``, default the model folder's).

        Raises:
            ValueError: no calibrated grid (:class:`ddim.loading.calibrations.CalibrationError`
            says why), or settings that give a grid of their own.
        """
        o = self.options
        if o.get("timesteps") is not None or o.get("spacing") not in (None, CALIBRATED,
                                                                       DEFAULT_SPACING):
            raise ValueError("a calibrated grid replaces the spacing: give spacing='calibrated'"
                             f" or none, not spacing={o.get('spacing')!r}")
        grid = calibrated_timesteps(file, model, o["solver"], o["steps"])
        return self.replaced(spacing=None, timesteps=grid)

    def keywords(self, lo: int, hi: int, x_T: torch.Tensor | None = None) -> dict[str, Any]:
        """The keywords of :func:`ddim.sample_iter` for samples ``lo .. hi-1`` of the run:
        the options, their generators and labels, and ``batch_size`` = hi - lo, or ``x_T``
        (hi-lo, ...) when given. Labels must be resolved (:meth:`for_model`)."""
        labels = (None if self.class_labels is None
                  else cycled_labels(self.class_labels, lo, hi))
        start = {"batch_size": hi - lo} if x_T is None else {"x_T": x_T}
        return dict(self.options, class_labels=labels,
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
        labels must be resolved (:meth:`for_model`). A latent model's samples are decoded,
        batch by batch: images (hi-lo, *image_shape), x_T and the steps being latents.

        Raises:
            the errors of :func:`ddim.sample_iter` (:class:`ddim.NonFiniteError` when the model
            returns NaN or inf).
        """
        chunks, latent = [], is_latent(model)
        for a in range(lo, hi, batch_size):
            b = min(a + batch_size, hi)
            rows = None if x_T is None else x_T[a - lo:b - lo]
            x = None
            for step in sample_iter(model, device=device, **self.keywords(a, b, rows)):
                x = step.sample
                if on_step is not None:
                    on_step(a, b, step)
            chunks.append((decode_samples(model, x) if latent else x).cpu())
        return torch.cat(chunks)

    def recorded(self) -> dict[str, Any]:
        """The settings as JSON values: the options (in the order given, defaults first),
        then ``seed`` and ``class_labels``. What run.json, the packed .npz and the command
        line's output files record."""
        return {**{k: _json(v) for k, v in self.options.items()}, "seed": self.seed,
                "class_labels": _json(self.class_labels)}


class RunSettings(SamplingSettings):
    """The settings of a :func:`ddim.generation.generate.generate` run: those of
    :class:`SamplingSettings`, and ``num`` >= 1 samples, ``shard_size`` >= 1 samples per file,
    ``batch_size`` >= 1 per model call (at most a shard's worth is used), ``png``.

    Raises:
        TypeError / ValueError naming the field and what is allowed.
    """

    __slots__ = ("num", "shard_size", "batch_size", "png")

    def __init__(self, *, num: int, shard_size: int, batch_size: int, png: bool = False,
                 **settings: Any) -> None:
        super().__init__(**settings)
        shard_size = check_int("shard_size", shard_size, low=1)
        object.__setattr__(self, "num", check_int("num", num, low=1))
        object.__setattr__(self, "shard_size", shard_size)
        object.__setattr__(self, "batch_size",
                           min(check_int("batch_size", batch_size, low=1), shard_size))
        object.__setattr__(self, "png", check_bool("png", png))

    def _arguments(self) -> dict[str, Any]:
        return dict(super()._arguments(), num=self.num, shard_size=self.shard_size,
                    batch_size=self.batch_size, png=self.png)

    def check_model(self, model: Any, device: torch.device | None = None) -> None:
        """As :meth:`SamplingSettings.check_model`, and that ``png`` has 1- or 3-channel
        samples. Raises TypeError / ValueError."""
        super().check_model(model, device)
        channels = output_shape(model)[0]
        if self.png and channels not in PIL_MODES:
            raise ValueError(f"PNG files hold 1- or 3-channel images, this model makes "
                             f"{channels} channels: ask for no PNGs")

    def recorded(self) -> dict[str, Any]:
        """The settings that run.json records: ``num``, those of
        :meth:`SamplingSettings.recorded`, ``shard_size``."""
        return dict(num=self.num, **super().recorded(), shard_size=self.shard_size)


def _json(value: Any) -> Any:
    """A setting as a JSON value: tuples become lists, numbers stay numbers."""
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    return value
