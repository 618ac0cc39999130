"""scikit-learn's 8×8 handwritten digits as diffusion training data.

The images (1797 of them, 16 grey levels 0..16) are scaled to [-1, 1] as ``pixel / 8 - 1``.
:func:`digits_split` fixes one train / held-out split that the bundled DDPM, the bundled
evaluation classifier and the tests all share.

scikit-learn is an optional dependency, in the ``eval`` extra (``pip install 'ddim[eval]'``);
:func:`require_sklearn` checks for it without importing it, and every function here checks
before any work.
"""

from __future__ import annotations

import torch

from ..checks import require_package

NUM_DIGITS = 1797
NUM_HELDOUT = 300
NUM_TRAIN = NUM_DIGITS - NUM_HELDOUT
SPLIT_SEED = 0


INSTALL = "pip install 'ddim[eval]'"


def require_sklearn() -> None:
    """Check that scikit-learn is installed, without importing it (cheap).

    Raises:
        ImportError: one line saying what to install.
    """
    require_package("sklearn", "scikit-learn", "the digits data")


def _sklearn_load_digits():
    """``sklearn.datasets.load_digits``, or an ImportError saying how to install it."""
    require_sklearn()
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # installed but broken
        raise ImportError(f"the digits data needs scikit-learn, which does not import "
                          f"({exc}): {INSTALL}") from exc
    return load_digits


def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits, in scikit-learn's order.

    Returns:
        images: float32 tensor of shape (1797, 1, 8, 8) with values in [-1, 1]
            (``pixel / 8 - 1`` for the 0..16 grey levels).
        labels: int64 tensor of shape (1797,) with values 0..9.

    Raises:
        ImportError: scikit-learn is not installed (one line saying what to install).
    """
    data = _sklearn_load_digits()()
    images = torch.as_tensor(data.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    labels = torch.as_tensor(data.target, dtype=torch.int64)
    return images, labels


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed split: a seed-0 ``torch.Generator`` permutation, 1497 train and 300 held out.

    Returns:
        (train_x, train_y, heldout_x, heldout_y): images of shape (1497, 1, 8, 8) and
        (300, 1, 8, 8), float32 in [-1, 1]; labels int64 of shape (1497,) and (300,).

    Raises:
        ImportError: scikit-learn is not installed (one line saying what to install).
    """
    images, labels = load_digits_images()
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, heldout = perm[:NUM_TRAIN], perm[NUM_TRAIN:]
    return images[train], labels[train], images[heldout], labels[heldout]
