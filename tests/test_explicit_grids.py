"""Explicit grids given as any 1-D integer array-like (a list, tuple, numpy array of any integer
dtype, CPU tensor), through every entry point that takes a grid (sample, sample_iter, invert,
img2img, inpaint, interpolation_strip, generate); anything else is a TypeError naming
``timesteps``, never an error from inside torch or numpy.

The reported case: ``timesteps=np.array([999, 600, 5])`` was refused as "not a sequence of
integers".
"""

import numpy as np
import pytest
import torch

import ddim

GRID = [999, 600, 5]
ARRAY_LIKES = [GRID, tuple(GRID), np.array(GRID), np.array(GRID, dtype=np.int32),
               np.array(GRID, dtype=np.uint16), torch.tensor(GRID),
               torch.tensor(GRID, dtype=torch.int32), np.array([999.0, 600.0, 5.0])]
IDS = ["list", "tuple", "numpy-int64", "numpy-int32", "numpy-uint16", "tensor-int64",
       "tensor-int32", "numpy-whole-floats"]
WHAT = (r"timesteps must be a 1-D sequence or array of integers \(a list, tuple, numpy array "
        r"or tensor\)")


class Recorder:
    """A smooth ε model that records the timestep of every call."""

    def __init__(self):
        self.t = []

    def __call__(self, x, t):
        self.t.append(int(t[0]))
        return 0.1 * torch.tanh(x)


def _x(b=2):
    return torch.randn(b, 1, 4, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("grid", ARRAY_LIKES, ids=IDS)
def test_every_entry_point_takes_any_integer_array_like(grid):
    ref = ddim.sample(Recorder(), timesteps=GRID, x_T=_x())
    for call in (lambda m: ddim.sample(m, timesteps=grid, x_T=_x()),
                 lambda m: list(ddim.sample_iter(m, timesteps=grid, x_T=_x()))[-1].sample):
        model = Recorder()
        assert torch.equal(call(model), ref) and model.t == GRID
    model = Recorder()
    ddim.invert(model, _x(), timesteps=grid)
    assert model.t == GRID[::-1]
    model = Recorder()
    ddim.img2img(model, _x(), 1.0, timesteps=grid)
    assert model.t == GRID  # strength 1 starts at T-1, the grid's first point
    model = Recorder()
    ddim.inpaint(model, _x(), torch.ones(1, 1, 4, 4), timesteps=grid,
                 generator=torch.Generator().manual_seed(0))
    assert model.t == GRID
    model = Recorder()
    ddim.interpolation_strip(model, _x(1), _x(1), num=2, timesteps=grid)
    assert model.t == GRID


def test_generate_takes_and_records_an_explicit_grid(tmp_path):
    import json

    result = ddim.generate("digits", tmp_path / "run", 4, timesteps=np.array(GRID),
                           shard_size=4)
    assert result.generated == 1
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["settings"]
    assert settings["timesteps"] == GRID and settings["steps"] == 3
    assert "spacing" not in settings


@pytest.mark.parametrize(("grid", "shown"), [
    ("999, 600, 5", r"'999, 600, 5'"),
    (999, r"999"),
    ({999: 1, 5: 1}, r"\{999: 1, 5: 1\}"),
    (np.array([[999, 600], [500, 5]]), r"an array of shape \(2, 2\)"),
    ([999, "600", 5], r"\[.999., .600., .5.\] \(dtype <U21\)"),
    ([999.5, 600.0], r"\[999\.5, 600\.0\] \(dtype float64\)"),
    (np.array([999, 600], dtype=np.complex64), r".* \(dtype complex64\)"),
    (torch.tensor([True, False]), r"\[True, False\] \(dtype bool\)"),
    ([[999, 600], [5]], r"\[\[999, 600\], \[5\]\]"),
    (object(), r"<object object at"),
])
def test_anything_else_is_a_type_error_naming_timesteps(grid, shown):
    for call in (lambda: ddim.sample(Recorder(), timesteps=grid, x_T=_x()),
                 lambda: ddim.sample_iter(Recorder(), timesteps=grid, x_T=_x()),
                 lambda: ddim.invert(Recorder(), _x(), timesteps=grid),
                 lambda: ddim.img2img(Recorder(), _x(), 0.5, timesteps=grid),
                 lambda: ddim.inpaint(Recorder(), _x(), torch.ones(1, 1, 4, 4),
                                      timesteps=grid)):
        with pytest.raises(TypeError, match=f"^{WHAT}, got {shown}"):
            call()


def test_values_out_of_range_or_order_are_value_errors_naming_timesteps():
    for grid, message in ((np.array([1000, 5]), r"timesteps must lie in \[0, 999\]"),
                          (np.array([5, 600]), r"not strictly decreasing at positions 0,1"),
                          (np.array([], dtype=np.int64), r"at least one timestep")):
        with pytest.raises(ValueError, match=message):
            ddim.sample(Recorder(), timesteps=grid, x_T=_x())
