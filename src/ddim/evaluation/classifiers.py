"""The shipped digit classifiers that evaluate the bundled models.

Each is a small CNN whose 64-d penultimate layer (SiLU, so that no feature is ever identically
zero) gives the features for Fréchet distances (:mod:`ddim.evaluation.frechet`) and whose logits
give class histograms and guidance accuracy:

- ``digits``: :class:`DigitsClassifier` for scikit-learn's 1×8×8 digits (the ``digits`` and
  ``digits-cond`` models), trained by ``scripts/train_digits_classifier.py`` on the training
  split of :func:`ddim.evaluation.digits.digits_split`;
- ``mnist``: :class:`MnistClassifier` for 1×28×28 MNIST digits (the ``mnist`` model), trained
  by ``scripts/train_mnist_classifier.py`` on the training split of
  :func:`ddim.evaluation.mnist.mnist_split`.

Both take images with values in [-1, 1]; their weights are package files under
``ddim/weights``, loaded with :func:`load_classifier`.
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn

FEATURE_DIM = 64
NUM_CLASSES = 10


class FeatureClassifier(nn.Module):
    """A CNN ``body`` ending in a 64-d feature layer, and a 10-way linear ``head`` on it.

    The features (SiLU, so that all 64 stay informative for Fréchet distances) are what
    :func:`ddim.evaluation.frechet.fd_from_features` compares; the logits give class histograms.
    """

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: (B, 1, H, W) images in [-1, 1] -> (B, 64) float32."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits: (B, 1, H, W) images in [-1, 1] -> (B, 10) float32."""
        return self.head(self.features(x))


class DigitsClassifier(FeatureClassifier):
    """A small CNN for 1×8×8 digit images with values in [-1, 1].

    Three 3×3 convolutions (32, 64 and 128 channels, a 2×2 max-pool after the second), global
    average pooling, then a 64-d feature layer (SiLU) and the 10-way output layer.
    """

    def __init__(self) -> None:
        super().__init__(nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, FEATURE_DIM), nn.SiLU(),  # SiLU: no feature is ever dead
        ))


class MnistClassifier(FeatureClassifier):
    """A small CNN for 1×28×28 MNIST digits with values in [-1, 1].

    Two stages of two 3×3 convolutions (32 then 64 channels, ReLU, a 2×2 max-pool after each
    stage: 28 -> 14 -> 7), a 3×3 convolution to 128 channels and a 2×2 max-pool (7 -> 3),
    then a 64-d feature layer (SiLU) on the flattened 128×3×3 map and the 10-way output layer.
    """

    def __init__(self) -> None:
        super().__init__(nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(128 * 3 * 3, FEATURE_DIM), nn.SiLU(),
        ))


# name: (class, weights file, script that makes the weights)
CLASSIFIERS = {
    "digits": (DigitsClassifier, "digits-classifier.safetensors",
               "scripts/train_digits_classifier.py"),
    "mnist": (MnistClassifier, "mnist-classifier.safetensors",
              "scripts/train_mnist_classifier.py"),
}


def load_classifier(name: str, device: torch.device | str | None = None) -> nn.Module:
    """The shipped classifier ``name`` (``"digits"`` or ``"mnist"``), in eval mode.

    Args:
        name: ``"digits"`` (:class:`DigitsClassifier`, 1×8×8) or ``"mnist"``
            (:class:`MnistClassifier`, 1×28×28).
        device: where to put it (default CPU).

    Raises:
        ValueError: unknown name.
        FileNotFoundError: its weights are not in this installation.
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; shipped: {sorted(CLASSIFIERS)}")
    from safetensors.torch import load_file

    cls, weights, script = CLASSIFIERS[name]
    ref = resources.files("ddim") / "weights" / weights
    if not ref.is_file():
        raise FileNotFoundError(
            f"the {name} classifier weights ({weights}) are not in this installation; "
            f"create them with {script}"
        )
    with resources.as_file(ref) as path:
        state = load_file(str(path))
    model = cls()
    model.load_state_dict(state)
    return model.to(device if device is not None else "cpu").eval()


def load_digits_classifier(device: torch.device | str | None = None) -> DigitsClassifier:
    """The shipped :class:`DigitsClassifier` (``load_classifier("digits", device)``)."""
    return load_classifier("digits", device)
