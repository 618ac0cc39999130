"""Exact oracles for testing samplers: the optimal ε-prediction for Gaussian-mixture data.

For data x0 ~ Σ_k w_k N(μ_k, diag(s_k²)) the forward marginal is the mixture
q(x_t) = Σ_k w_k N(sqrt(ᾱ_t)·μ_k, diag(ᾱ_t·s_k² + 1 - ᾱ_t)), and the ε-prediction that
minimises the DDPM loss is ε*(x_t, t) = -sqrt(1-ᾱ_t)·∇ log q(x_t). A "model" built from it
isolates the sampler's own error: with a single Gaussian the probability-flow ODE is solved in
closed form (:meth:`GaussianMixture.flow_map`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .maths.schedule import NoiseSchedule


class GaussianMixture:
    """A diagonal Gaussian mixture over samples of shape ``event_shape`` (float64 math).

    Args:
        means: (K, *event_shape) component means μ_k.
        stds: (K, *event_shape) or broadcastable: component standard deviations s_k > 0.
        weights: (K,) mixture weights w_k (normalised here); default uniform.
    """

    def __init__(self, means: torch.Tensor, stds: torch.Tensor | float,
                 weights: Sequence[float] | torch.Tensor | None = None) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim < 2:
            raise ValueError(f"means must have shape (K, *event_shape), got "
                             f"{tuple(self.means.shape)}")
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand_as(self.means).clone()
        if not (self.stds > 0).all():
            raise ValueError("stds must be positive")
        k = self.means.shape[0]
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else (
            torch.as_tensor(weights, dtype=torch.float64))
        if w.shape != (k,) or not (w > 0).all():
            raise ValueError(f"weights must be {k} positive numbers, got {w.tolist()}")
        self.weights = w / w.sum()

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.means.shape[1:])

    @property
    def mean(self) -> torch.Tensor:
        """E[x0], shape ``event_shape``."""
        return torch.einsum("k,k...->...", self.weights, self.means)

    @property
    def variance(self) -> torch.Tensor:
        """Var[x0] per coordinate, shape ``event_shape``."""
        second = torch.einsum("k,k...->...", self.weights, self.stds**2 + self.means**2)
        return second - self.mean**2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples of x0, float64, shape (n, *event_shape)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z

    def log_responsibilities(self, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """log p(k | x_t) for x_t at level ᾱ (shape () or (B,)): shape (B, K)."""
        x = x.to(torch.float64)
        a = _per_sample(alpha_bar, x)[:, None]  # (B, 1, 1...)
        var = a * self.stds**2 + (1 - a)  # (B, K, *event)
        diff = x[:, None] - a.sqrt() * self.means
        dims = tuple(range(2, diff.ndim))
        log_n = -0.5 * ((diff**2 / var) + var.log() + math.log(2 * math.pi)).sum(dims)
        log_p = log_n + self.weights.log()
        return log_p - torch.logsumexp(log_p, dim=1, keepdim=True)

    def eps(self, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """ε*(x_t) = -sqrt(1-ᾱ)·∇log q(x_t), float64, x's shape."""
        x64 = x.to(torch.float64)
        a = _per_sample(alpha_bar, x64)[:, None]
        var = a * self.stds**2 + (1 - a)
        r = self.log_responsibilities(x64, alpha_bar).exp()
        r = r.reshape(r.shape + (1,) * (x64.ndim - 1))
        score = -(r * (x64[:, None] - a.sqrt() * self.means) / var).sum(1)
        return -(1 - a[:, 0]).sqrt() * score

    def x0(self, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """x0*(x_t) = E[x0 | x_t], float64, x's shape: per component μ_k + sqrt(ᾱ)s_k²/(ᾱs_k² +
        1 - ᾱ)·(x_t - sqrt(ᾱ)μ_k), weighted by p(k | x_t). Defined at every level, ᾱ = 0
        (zero terminal SNR: the data mean) included."""
        x64 = x.to(torch.float64)
        a = _per_sample(alpha_bar, x64)[:, None]
        gain = a.sqrt() * self.stds**2 / (a * self.stds**2 + (1 - a))
        r = self.log_responsibilities(x64, alpha_bar).exp()
        r = r.reshape(r.shape + (1,) * (x64.ndim - 1))
        return (r * (self.means + gain * (x64[:, None] - a.sqrt() * self.means))).sum(1)

    def model(self, schedule: NoiseSchedule, prediction_type: str = "epsilon"):
        """A model ``fn(x, t)`` returning the optimal ε (or x0, or v) at training step t.

        The output has x's dtype; the math runs in float64. x0 and v come from
        :meth:`x0` and ε (never from dividing by sqrt(ᾱ)), so they are exact at ᾱ = 0 too.
        """
        alphas = schedule.alphas_cumprod

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            a = alphas[t.cpu()].to(x.device)
            ab = a.reshape(a.shape + (1,) * (x.ndim - 1))
            if prediction_type == "epsilon":
                out = self.eps(x, a)
            elif prediction_type == "sample":
                out = self.x0(x, a)
            elif prediction_type == "v_prediction":
                out = ab.sqrt() * self.eps(x, a) - (1 - ab).sqrt() * self.x0(x, a)
            else:
                raise ValueError(f"unknown prediction_type {prediction_type!r}")
            return out.to(x.dtype)

        return fn

    def conditional_model(self, schedule: NoiseSchedule) -> ConditionalOracle:
        """A class-conditional oracle: label k gives component k's exact ε, the null label
        K (= number of components) the mixture's. See :class:`ConditionalOracle`."""
        return ConditionalOracle(self, schedule)

    def flow_map(self, x_T: torch.Tensor, alpha_bar_T: float, alpha_bar_0: float = 1.0
                 ) -> torch.Tensor:
        """Exact probability-flow ODE map from level ᾱ_T to ᾱ_0, for a single component.

        In x̄ = x/sqrt(ᾱ), σ̄ = sqrt((1-ᾱ)/ᾱ) the ODE dx̄ = ε*·dσ̄ keeps (x̄ - μ)/sqrt(s² + σ̄²)
        constant, so x̄_0 = μ + (x̄_T - μ)·sqrt(s² + σ̄_0²)/sqrt(s² + σ̄_T²).
        """
        if self.means.shape[0] != 1:
            raise ValueError("flow_map is closed-form only for a single Gaussian (K=1)")
        mu, s2 = self.means[0], self.stds[0] ** 2
        sb_T = (1 - alpha_bar_T) / alpha_bar_T
        sb_0 = (1 - alpha_bar_0) / alpha_bar_0
        xb_T = x_T.to(torch.float64) / math.sqrt(alpha_bar_T)
        xb_0 = mu + (xb_T - mu) * ((s2 + sb_0) / (s2 + sb_T)).sqrt()
        return xb_0 * math.sqrt(alpha_bar_0)


class ConditionalOracle:
    """``model(x, t, class_labels) -> ε``: exact per-component ε, mixture ε for the null class.

    Has ``num_classes`` (K) and ``null_class`` (K) as :mod:`ddim.sampling.guidance` expects.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule) -> None:
        self.mixture, self.alphas = mixture, schedule.alphas_cumprod
        self.num_classes = self.null_class = mixture.means.shape[0]
        self.calls: list[int] = []  # batch size of every call

    def __call__(self, x: torch.Tensor, t: torch.Tensor,
                 class_labels: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        a = self.alphas[t.cpu()]
        out = self.mixture.eps(x, a)  # the null class: the whole mixture
        for k in range(self.num_classes):
            rows = (class_labels == k).cpu()
            if rows.any():
                single = GaussianMixture(self.mixture.means[k:k + 1], self.mixture.stds[k:k + 1])
                out[rows] = single.eps(x[rows], a[rows])
        return out.to(x.dtype)


def _per_sample(alpha_bar: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """ᾱ as shape (B, 1, ..., 1) matching x (B, *event)."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x.device)
    a = a.expand(x.shape[0]) if a.ndim == 0 else a
    return a.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
