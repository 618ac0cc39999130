"""The Fréchet distance (FD) between feature statistics, computed in float64 on the CPU.

The FD between two Gaussians N(μ1, C1) and N(μ2, C2) is

    FD = |μ1 - μ2|² + tr C1 + tr C2 - 2 tr sqrt(sqrt(C1) C2 sqrt(C1))

and FID is this distance between Inception-v3 pool features of real and generated images.
Any feature network can stand in for Inception: a :class:`FeatureExtractor` is any callable
mapping a batch of images to an (N, D) feature tensor (:mod:`ddim.evaluation.kits` holds the
shipped ones for the bundled models' images).
"""

from __future__ import annotations

from typing import Protocol

import torch


class FeatureExtractor(Protocol):
    """Maps images of shape (B, C, H, W) to features of shape (B, D).

    ``load_classifier("digits").features`` (:mod:`ddim.evaluation.classifiers`) is one; an
    Inception-v3 pool-feature network (for FID on natural images) is another. Images are
    passed as given: the extractor resizes or rescales them itself if it needs to.
    """

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def _as_float64(name: str, value: torch.Tensor, ndim: int) -> torch.Tensor:
    """``value`` as a finite float64 CPU tensor with ``ndim`` dimensions, or a ValueError."""
    t = torch.as_tensor(value).detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got NaN or inf values")
    return t


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (tiny negative eigenvalues -> 0)."""
    evals, evecs = torch.linalg.eigh(cov)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2), computed in float64.

    Args:
        mu1, mu2: means, shape (D,).
        cov1, cov2: covariances, shape (D, D), symmetric positive semi-definite (they are
            symmetrized; eigenvalues below zero from rounding are treated as zero).

    Returns:
        |mu1 - mu2|² + tr C1 + tr C2 - 2 tr sqrt(sqrt(C1) C2 sqrt(C1)) as a float; a
        result below zero from rounding (identical inputs) is returned as 0.0.
    """
    mu1, mu2 = _as_float64("mu1", mu1, 1), _as_float64("mu2", mu2, 1)
    cov1, cov2 = _as_float64("cov1", cov1, 2), _as_float64("cov2", cov2, 2)
    d = mu1.numel()
    for name, t, shape in (("mu2", mu2, (d,)), ("cov1", cov1, (d, d)), ("cov2", cov2, (d, d))):
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} to match mu1 of shape ({d},), "
                f"got {tuple(t.shape)}"
            )
    cov1, cov2 = (cov1 + cov1.T) / 2, (cov2 + cov2.T) / 2
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return max(float(fd), 0.0)


def feature_statistics(
    features: torch.Tensor, name: str = "features"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D), float64, of (N, D) features with N >= 2."""
    f = _as_float64(name, features, 2)
    if f.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows (samples), got shape {tuple(f.shape)}")
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def fd_from_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """Fréchet distance between the Gaussian fits of two (N, D) feature sets (same D)."""
    mu1, cov1 = feature_statistics(features1, "features1")
    mu2, cov2 = feature_statistics(features2, "features2")
    if mu1.numel() != mu2.numel():
        raise ValueError(
            f"features1 and features2 must have the same feature size, got {mu1.numel()} "
            f"and {mu2.numel()}"
        )
    return frechet_distance(mu1, cov1, mu2, cov2)


def check_images(name: str, images: torch.Tensor) -> torch.Tensor:
    """``images`` if it is a finite (N, C, H, W) tensor with N >= 1.

    Raises:
        TypeError: not a tensor. ValueError: another shape, or NaN/inf; naming ``name``.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} must be finite, got NaN or inf values")
    return images


@torch.no_grad()
def extract_features(
    images: torch.Tensor, feature_extractor: FeatureExtractor, batch_size: int = 500
) -> torch.Tensor:
    """Features (N, D) of (N, C, H, W) images, in batches, as float64 CPU tensor."""
    check_images("images", images)
    parts = [feature_extractor(images[i : i + batch_size]) for i in
             range(0, images.shape[0], batch_size)]
    out = torch.cat([torch.as_tensor(p).detach().to("cpu", torch.float64) for p in parts])
    if out.ndim != 2 or out.shape[0] != images.shape[0]:
        raise ValueError(
            f"feature_extractor must return (N, D) features, got shape {tuple(out.shape)} "
            f"for {images.shape[0]} images"
        )
    return out
