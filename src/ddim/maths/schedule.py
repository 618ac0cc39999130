"""The noise schedule: the marginals of a variance-preserving diffusion, t = 0 .. T-1.

Notation (DDIM paper, Song, Meng & Ermon 2021; ᾱ is the paper's α):

====================  =========================================================
``alphas_cumprod[t]``  ᾱ_t = prod_{s<=t} (1 - β_s) (float64)
``sigmas[t]``          σ_t = sqrt((1-ᾱ_t)/ᾱ_t): the noise level of x_t/sqrt(ᾱ_t) (EDM)
``half_log_snr[t]``    λ_t = log(sqrt(ᾱ_t)/sqrt(1-ᾱ_t)) = -log σ_t (DPM-Solver)
====================  =========================================================

The schedule holds marginals only: the sampling grids are :mod:`ddim.maths.grids`, DDIM's
σ_t(η) is :func:`ddim.maths.ddim_coefficients.ddim_sigma`.

A :class:`NoiseSchedule` is an immutable value: every accessor returns a fresh tensor, so no
caller can change the schedule another caller sees.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..checks import check_int

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "cosine")


class NoiseSchedule:
    """Cumulative signal levels ᾱ_t of a variance-preserving diffusion, t = 0 .. T-1.

    Args:
        alphas_cumprod: shape (T,), strictly decreasing values in (0, 1]. A zero as the last
            value is allowed only with ``allow_zero_terminal=True`` (zero terminal SNR, usable
            only with ``v_prediction`` or ``sample`` models).
        allow_zero_terminal: accept ᾱ_{T-1} = 0 (see :meth:`rescale_zero_terminal_snr`).

    Stored in float64 whatever the input dtype (fp16 schedules round ᾱ_t to 1 near t=0).
    """

    __slots__ = ("_alphas_cumprod", "_zero_terminal", "_hash")

    def __init__(self, alphas_cumprod: Any, *, allow_zero_terminal: bool = False) -> None:
        a = _float64(alphas_cumprod, "alphas_cumprod").clone()
        if a.ndim != 1 or a.numel() < 1:
            raise ValueError(
                f"alphas_cumprod must be a 1-D sequence with at least one value, "
                f"got shape {tuple(a.shape)}"
            )
        if not torch.isfinite(a).all():
            raise ValueError("alphas_cumprod must be finite, got NaN or inf values")
        low_ok = (a[:-1] > 0).all() and (a[-1] > 0 or (allow_zero_terminal and a[-1] == 0))
        if not low_ok or (a > 1).any():
            bad = a[(a <= 0) | (a > 1)]
            hint = (
                " (a zero terminal value needs allow_zero_terminal=True)"
                if a[-1] == 0 and (a[:-1] > 0).all()
                else ""
            )
            raise ValueError(
                f"alphas_cumprod must lie in (0, 1], got values such as {bad[:3].tolist()}{hint}"
            )
        if a.numel() > 1 and not (a[1:] < a[:-1]).all():
            i = int(torch.nonzero(a[1:] >= a[:-1])[0])
            raise ValueError(
                "alphas_cumprod must be strictly decreasing, got "
                f"alphas_cumprod[{i}]={a[i].item():.6g} <= alphas_cumprod[{i + 1}]="
                f"{a[i + 1].item():.6g}"
            )
        self._alphas_cumprod = a
        self._zero_terminal = bool(a[-1] == 0)
        self._hash = hash(tuple(a.tolist()))  # immutable: hashed once (sampling plans are cached)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_betas(cls, betas: Any, *, allow_zero_terminal: bool = False) -> NoiseSchedule:
        """Schedule with ᾱ_t = prod_{s<=t}(1 - β_s); betas of shape (T,) in (0, 1)."""
        b = _float64(betas, "betas")
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError(f"betas must be a 1-D sequence, got shape {tuple(b.shape)}")
        if not torch.isfinite(b).all() or (b <= 0).any() or (b > 1).any():
            raise ValueError(f"betas must lie in (0, 1], got min {b.min().item():.6g}, "
                             f"max {b.max().item():.6g}")
        if (b == 1).any() and not allow_zero_terminal:
            raise ValueError("betas equal to 1 give ᾱ = 0 (zero terminal SNR); "
                             "pass allow_zero_terminal=True to accept that")
        return cls(torch.cumprod(1.0 - b, dim=0), allow_zero_terminal=allow_zero_terminal)

    @classmethod
    def linear(
        cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """The DDPM paper's schedule: β linear from ``beta_start`` to ``beta_end`` over T steps.

        The defaults (T=1000, 1e-4 .. 0.02) are what the ``google/ddpm-*`` checkpoints use.
        """
        return cls.named("linear", num_train_timesteps, beta_start=beta_start, beta_end=beta_end)

    @classmethod
    def named(
        cls,
        name: str,
        num_train_timesteps: int = 1000,
        *,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        rescale_zero_terminal_snr: bool = False,
    ) -> NoiseSchedule:
        """A schedule by diffusers' names.

        Args:
            name: ``linear`` (β linear), ``scaled_linear`` (sqrt(β) linear, Stable Diffusion),
                ``squaredcos_cap_v2`` or its alias ``cosine`` (Nichol & Dhariwal 2021, β ≤ 0.999).
            num_train_timesteps: T, an integer >= 1.
            beta_start, beta_end: β_0 and β_{T-1} for the two linear schedules.
            rescale_zero_terminal_snr: apply :meth:`rescale_zero_terminal_snr` (Lin et al. 2023).
        """
        T = check_int("num_train_timesteps", num_train_timesteps, low=1)
        if name == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        elif name == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
        elif name in ("squaredcos_cap_v2", "cosine"):
            def f(t: float) -> float:
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = torch.tensor(
                [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64
            )
        else:
            raise ValueError(f"beta schedule must be one of {BETA_SCHEDULES}, got {name!r}")
        sched = cls.from_betas(betas)
        return sched.rescale_zero_terminal_snr() if rescale_zero_terminal_snr else sched

    @classmethod
    def from_diffusers(cls, scheduler_or_config: Any) -> NoiseSchedule:
        """The schedule of a diffusers scheduler object or its config dict.

        Accepts a ``DDPMScheduler``/``DDIMScheduler`` (or any scheduler with a ``config``), or the
        dict from a ``scheduler_config.json``: ``num_train_timesteps``, ``beta_schedule``,
        ``beta_start``, ``beta_end``, ``trained_betas`` and ``rescale_betas_zero_snr`` are read;
        the sampling options in it (``clip_sample``, ``set_alpha_to_one``, ...) are not part of
        the schedule and are ignored here.
        """
        config = getattr(scheduler_or_config, "config", scheduler_or_config)
        if not isinstance(config, Mapping):
            raise TypeError(
                "from_diffusers expects a diffusers scheduler or its config dict, "
                f"got {type(scheduler_or_config).__name__}"
            )
        rescale = bool(config.get("rescale_betas_zero_snr", False))
        trained = config.get("trained_betas")
        if trained is not None:
            sched = cls.from_betas(trained)
            return sched.rescale_zero_terminal_snr() if rescale else sched
        return cls.named(
            config.get("beta_schedule", "linear"),
            config.get("num_train_timesteps", 1000),
            beta_start=float(config.get("beta_start", 1e-4)),
            beta_end=float(config.get("beta_end", 0.02)),
            rescale_zero_terminal_snr=rescale,
        )

    def rescale_zero_terminal_snr(self) -> NoiseSchedule:
        """Lin et al. 2023: shift and scale sqrt(ᾱ) so that ᾱ_{T-1} = 0 and ᾱ_0 is unchanged.

        The result has zero terminal SNR: the last step sees pure noise. ε-prediction cannot be
        sampled from it (x0̂ divides by sqrt(ᾱ_{T-1}) = 0); use v- or x0-prediction models.
        """
        s = self._alphas_cumprod.sqrt()
        s0, sT = s[0].clone(), s[-1].clone()
        s = (s - sT) * s0 / (s0 - sT)
        return NoiseSchedule(s**2, allow_zero_terminal=True)

    # ------------------------------------------------------------------ accessors
    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training steps."""
        return self._alphas_cumprod.numel()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t for t = 0 .. T-1: a fresh float64 CPU tensor of shape (T,)."""
        return self._alphas_cumprod.clone()

    @property
    def betas(self) -> torch.Tensor:
        """β_t = 1 - ᾱ_t/ᾱ_{t-1} (β_0 = 1 - ᾱ_0), float64, shape (T,)."""
        a = self._alphas_cumprod
        return 1.0 - a / torch.cat([a.new_ones(1), a[:-1]])

    @property
    def zero_terminal_snr(self) -> bool:
        """True when ᾱ_{T-1} = 0 (pure noise at the last step)."""
        return self._zero_terminal

    def __len__(self) -> int:
        return self.num_train_timesteps

    def __repr__(self) -> str:
        a = self._alphas_cumprod
        return (f"NoiseSchedule(T={a.numel()}, alpha_bar[0]={a[0].item():.6g}, "
                f"alpha_bar[T-1]={a[-1].item():.6g})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoiseSchedule):
            return NotImplemented
        return torch.equal(self._alphas_cumprod, other._alphas_cumprod)

    def __hash__(self) -> int:
        return self._hash

    # ------------------------------------------------------------------ marginals
    def alpha_bar(self, timesteps: torch.Tensor | Sequence[int] | int) -> torch.Tensor:
        """ᾱ at the given timesteps, float64 (index -1 means "before t=0": ᾱ = 1).

        Raises:
            ValueError: a timestep outside [-1, T-1].
        """
        t = torch.as_tensor(timesteps, dtype=torch.int64)
        if ((t < -1) | (t >= self.num_train_timesteps)).any():
            raise ValueError(f"timesteps must lie in [-1, {self.num_train_timesteps - 1}], "
                             f"got {t.tolist()}")
        padded = torch.cat([self._alphas_cumprod, self._alphas_cumprod.new_ones(1)])
        return padded[t]  # index -1 picks the appended 1

    @property
    def sigmas(self) -> torch.Tensor:
        """σ_t = sqrt((1-ᾱ_t)/ᾱ_t), the noise level of x_t/sqrt(ᾱ_t) (EDM's σ, Karras et al.
        2022), t = 0 .. T-1: float64 of shape (T,), increasing; +inf where ᾱ = 0."""
        a = self._alphas_cumprod
        return ((1 - a) / a).sqrt()

    @property
    def half_log_snr(self) -> torch.Tensor:
        """λ_t = log(sqrt(ᾱ_t)/sqrt(1-ᾱ_t)) = -log σ_t, t = 0 .. T-1: float64 of shape (T,),
        decreasing; -inf where ᾱ = 0 (DPM-Solver's λ, Lu et al. 2022)."""
        return -self.sigmas.log()


@functools.cache
def default_schedule() -> NoiseSchedule:
    """The schedule used when none is given: :meth:`NoiseSchedule.linear` (T=1000, β 1e-4 ..
    0.02, the ``google/ddpm-*`` checkpoints'). Built once; schedules are immutable, so it is
    shared."""
    return NoiseSchedule.linear()


def _float64(values: Any, name: str) -> torch.Tensor:
    """A float64 CPU tensor; Python floats are read as float64, never through float32."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r:.60}") from err
