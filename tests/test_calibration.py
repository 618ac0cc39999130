"""Grids calibrated per model: the search is deterministic, never worse than the best preset
on its own objective, refuses bad arguments before any model call, and its file round-trips;
a wrong or stale file is refused, naming what differs; spacing="calibrated" finds the grid
through the bundle, and the CLI and generate record the grid itself."""

import json
import shutil

import numpy as np
import pytest
import torch

import ddim
from ddim import cli
from ddim.calibration.search import PRESETS, calibrate_timesteps, calibration_noise
from ddim.loading.calibrations import (
    CalibrationError,
    find_grid,
    grid_key,
    read_calibrations,
    save_grid,
)
from ddim.loading.pretrained import bundled_path

FEW = dict(num_noises=8, teacher_steps=20, max_evaluations=12)  # cheap: the digits model


@pytest.fixture(scope="module")
def digits():
    return ddim.load_pretrained("digits")


@pytest.fixture
def digits_copy(tmp_path):
    """A copy of the bundled digits folder, so that its calibration.json can be written."""
    folder = tmp_path / "digits"
    shutil.copytree(bundled_path("digits"), folder)
    (folder / "calibration.json").unlink(missing_ok=True)
    return folder


class Counting:
    """Counts the calls of a model."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.schedule, self.sample_shape = model.schedule, model.sample_shape
        self.prediction_type = model.prediction_type

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


def test_the_search_is_deterministic_and_beats_its_start(digits):
    a = calibrate_timesteps(digits, 4, solver="ipndm", **FEW)
    b = calibrate_timesteps(digits, 4, solver="ipndm", **FEW)
    assert a.timesteps == b.timesteps and a.objective == b.objective
    assert len(a.timesteps) == 4 and a.timesteps[0] == 999
    assert a.timesteps[-1] == a.teacher["end"] == 10  # the teacher's time_quadratic end, T/100
    assert list(a.timesteps) == sorted(a.timesteps, reverse=True)
    assert set(a.presets) == set(PRESETS) and a.start == min(a.presets, key=a.presets.get)
    assert a.objective <= min(a.presets.values())
    assert a.evaluations <= FEW["max_evaluations"]
    assert a.model_calls == 1 + 8 * (20 + 4 * a.evaluations)
    other = calibrate_timesteps(digits, 4, solver="ipndm", seed=1, **FEW)
    assert other.objective != a.objective  # another seed: other noises


def test_the_calibration_noise_is_a_stream_of_its_own():
    from ddim.sampling.noise import sample_generators

    noise = calibration_noise((1, 8, 8), 4, seed=0)
    again = calibration_noise((1, 8, 8), 4, seed=0)
    samples = torch.stack([torch.randn(1, 8, 8, generator=g)
                           for g in sample_generators(0, 0, 4)])
    assert torch.equal(noise, again) and not torch.isclose(noise, samples).any()


@pytest.mark.parametrize(("call", "kwargs", "error", "message"), [
    ("digits", dict(steps=0), ValueError, r"^steps must be an integer in \[1, 1000\], got 0$"),
    ("digits", dict(steps=2.0), TypeError, r"^steps must be an integer in \[1, 1000\]"),
    ("digits", dict(steps=4, solver="dpm"), ValueError, r"^solver must be one of \('ddim'"),
    ("digits", dict(steps=4, solver="dpmpp_2m_sde"), ValueError,
     r"^solver='dpmpp_2m_sde' draws noise: its end point is not a function of x_T"),
    ("plain", dict(steps=4), ValueError, r"^calibrate_timesteps needs the model's schedule: "
                                         r"pass a ddim.Pretrained bundle"),
    ("digits", dict(steps=4, num_noises=1), ValueError, r"^num_noises must be an integer >= 2"),
    ("digits", dict(steps=4, teacher_steps=3), ValueError,
     r"^teacher_steps must be an integer in \[4, 1000\], got 3$"),
    ("digits", dict(steps=4, max_evaluations=2), ValueError, r"^max_evaluations must be"),
])
def test_bad_arguments_are_refused_before_any_model_call(digits, call, kwargs, error, message):
    model = Counting(digits) if call == "digits" else (lambda x, t: x)
    with pytest.raises(error, match=message):
        calibrate_timesteps(model, **kwargs)
    assert getattr(model, "calls", 0) == 0


def test_the_file_round_trips_and_spacing_calibrated_finds_it(digits_copy):
    bundle = ddim.load_pretrained(digits_copy)
    result = calibrate_timesteps(bundle, 5, solver="dpmpp_3m_true", **FEW)
    assert result.default_path == digits_copy / "calibration.json"
    path = result.save()
    (entry,) = read_calibrations(path)
    assert entry["timesteps"] == list(result.timesteps) and entry["steps"] == 5
    assert entry["weights"]["sha256"] == ddim.loading.identity.weights_identity(
        bundle.model)["sha256"]
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    want = ddim.sample(bundle, timesteps=list(result.timesteps), solver="dpmpp_3m_true",
                       x_T=x_T)
    got = ddim.sample(bundle, 5, solver="dpmpp_3m_true", spacing="calibrated", x_T=x_T)
    assert torch.equal(got, want)
    assert ddim.calibrated_timesteps(path, bundle, "dpmpp_3m_true", 5) == list(result.timesteps)
    result.save()  # the same key again: replaced, not duplicated
    assert len(read_calibrations(path)) == 1


def test_a_missing_or_stale_grid_is_refused_naming_what_differs(digits_copy, digits, tmp_path):
    bundle = ddim.load_pretrained(digits_copy)
    key = grid_key(bundle.model, bundle.schedule, "epsilon", "ipndm", 5)
    path = tmp_path / "cal.json"
    save_grid(path, {**key, "timesteps": [999, 500, 200, 50, 5]})
    assert find_grid(path, key) == [999, 500, 200, 50, 5]
    with pytest.raises(CalibrationError, match=r"holds no calibrated grid for solver='ipndm', "
                                               r"steps=6 \(it has solver/steps: ipndm/5\)"):
        find_grid(path, {**key, "steps": 6})
    other = ddim.load_pretrained("digits-cond")
    with pytest.raises(CalibrationError, match=r"was fitted to another model: weights \(sha256 "
                                               r"[0-9a-f]{12}… there, sha256 [0-9a-f]{12}… now\)"):
        ddim.calibrated_timesteps(path, other, "ipndm", 5)
    cosine = ddim.NoiseSchedule.named("cosine")
    with pytest.raises(CalibrationError, match=r"another model: schedule_sha256"):
        ddim.calibrated_timesteps(path, bundle, "ipndm", 5, schedule=cosine)
    with pytest.raises(CalibrationError, match=r"another model: prediction_type \(\"epsilon\" "
                                               r"there, \"v_prediction\" now\)"):
        ddim.calibrated_timesteps(path, bundle, "ipndm", 5, prediction_type="v_prediction")
    path.write_text("{}")
    with pytest.raises(CalibrationError, match=r"is not a calibration file of format "):
        find_grid(path, key)
    with pytest.raises(CalibrationError, match=r"^no calibration file .*calibration\.json: fit "
                                               r"one with `ddim calibrate`"):
        ddim.sample(bundle, 5, spacing="calibrated", solver="ipndm")


def test_spacing_calibrated_needs_a_bundle_and_no_offset():
    with pytest.raises(ValueError, match=r"^spacing='calibrated' needs a model bundle"):
        ddim.sample(lambda x, t: x, 5, spacing="calibrated", x_T=torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"^steps_offset=1 has no effect with "
                                         r"spacing='calibrated'"):
        ddim.sample(lambda x, t: x, 5, spacing="calibrated", steps_offset=1,
                    x_T=torch.zeros(1, 1, 2, 2))


def test_the_cli_calibrates_samples_and_generates_with_the_grid(digits_copy, tmp_path,
                                                                 capsys):
    argv = ["calibrate", "--model", str(digits_copy), "--solver", "ipndm", "--steps", "3",
            "4", "--noises", "4"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "ipndm, 3 steps: [999, " in out and f"wrote 2 grids to {digits_copy}" in out
    assert [g["steps"] for g in read_calibrations(digits_copy / "calibration.json")] == [3, 4]
    grid = ddim.calibrated_timesteps(None, ddim.load_pretrained(digits_copy), "ipndm", 4)
    assert cli.main(["sample", "--model", str(digits_copy), "--solver", "ipndm", "--steps", "4",
                     "--spacing", "calibrated", "--num", "2",
                     "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as data:
        assert data["timesteps"].tolist() == grid and "spacing" not in data.files
    assert cli.main(["generate", "--model", "digits", "--solver", "ipndm", "--steps", "4",
                     "--calibration", str(digits_copy / "calibration.json"), "--num", "2",
                     "--out", str(tmp_path / "run")]) == 0
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["settings"]
    assert settings["timesteps"] == grid
    capsys.readouterr()
    assert cli.main(["sample", "--model", "digits", "--solver", "ipndm", "--steps", "6",
                     "--calibration", str(digits_copy / "calibration.json"),
                     "--out", str(tmp_path / "t.png")]) == 2
    assert "holds no calibrated grid for solver='ipndm', steps=6" in capsys.readouterr().err


def test_generate_with_spacing_calibrated_records_the_grid(digits_copy, tmp_path):
    bundle = ddim.load_pretrained(digits_copy)
    calibrate_timesteps(bundle, 3, solver="unipc", **FEW).save()
    ddim.generate(bundle, tmp_path / "run", 2, steps=3, solver="unipc", spacing="calibrated")
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["settings"]
    assert settings["timesteps"] == bundle.calibrated_timesteps("unipc", 3)
    assert "spacing" not in settings


def test_candidate_grids_end_where_the_teacher_ends():
    """A free last point is a trap (the blurred x̂0 of a high t is closer in mean square to the
    teacher's sample than a sharp one): presets start with their last point moved to the
    teacher's end, the points above pushed up where they would meet it."""
    from ddim.calibration.search import ending_at

    assert ending_at([999, 749, 499, 249], 10) == [999, 749, 499, 10]
    assert ending_at([999, 12, 11, 0], 10) == [999, 12, 11, 10]
    assert ending_at([999, 11, 3, 2, 0], 10) == [999, 13, 12, 11, 10]
    assert ending_at([999], 10) == [999]


def test_a_bundled_models_shipped_grids_are_never_rewritten_by_default(capsys):
    """A default save into a bundled model's calibration.json (inside the package) is
    refused, from Python and from the command line, before any fit; an explicit path is
    taken (the developers' refit)."""
    shipped = ddim.load_pretrained("digits")
    shipped_file = bundled_path("digits") / "calibration.json"
    before = shipped_file.read_bytes()
    fit = calibrate_timesteps(shipped, 3, solver="unipc", **FEW)
    with pytest.raises(ValueError, match=r"ships with the ddim package \(a bundled model\): a "
                                         r"default save does not rewrite it; give a file of "
                                         r"your own \(save\(path\) / ddim calibrate --out FILE\)"):
        fit.save()
    assert cli.main(["calibrate", "--model", "digits", "--solver", "unipc", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "--model digits: " in err and "ships with the ddim package (a bundled model)" in err
    assert shipped_file.read_bytes() == before
