"""Reproducible Gaussian noise: one generator, one generator per sample, or the global RNG.

Noise is drawn in float32 on the generator's device and then moved to the sample's device and
dtype, so a CPU generator gives the same numbers whether the sampler runs on CPU or CUDA. With a
list of generators, sample j draws only from ``generator[j]`` (its x_T first, then one draw per
noisy step), so a sample does not depend on the batch it lands in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def check_generator_list(generator: Generators, batch_size: int) -> Generators:
    """Validate ``generator`` for a batch of ``batch_size``; returns it (a list as a list).

    Raises:
        TypeError: not a ``torch.Generator``, a list of them, or None. ValueError: a list
            whose length is not ``batch_size``, or whose generators sit on several devices.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if not isinstance(generator, Sequence) or isinstance(generator, str):
        raise TypeError("generator must be a torch.Generator or a list of them, got "
                        f"{type(generator).__name__}")
    gens = list(generator)
    for i, g in enumerate(gens):
        if not isinstance(g, torch.Generator):
            raise TypeError(f"generator[{i}] must be a torch.Generator, got {type(g).__name__}")
    if len(gens) != batch_size:
        raise ValueError(f"generator list must have one generator per sample: "
                         f"batch size {batch_size}, got {len(gens)} generators")
    if len({g.device for g in gens}) > 1:
        raise ValueError("all generators in the list must be on one device, got "
                         f"{sorted({str(g.device) for g in gens})}")
    return gens


def check_generator_device(generator: Generators, device: torch.device) -> None:
    """A generator must live on the CPU (same numbers everywhere) or on ``device``.

    Raises:
        ValueError: the generator (list) is on another accelerator than ``device``.
    """
    if generator is None:
        return
    what = "generator" if isinstance(generator, torch.Generator) else "generator list"
    _check_device(_generator_device(generator), device, what)


def check_generators(generator: Generators, batch_size: int, device: torch.device) -> Generators:
    """:func:`check_generator_list` and :func:`check_generator_device` in one call."""
    gens = check_generator_list(generator, batch_size)
    check_generator_device(gens, device)
    return gens


def randn(shape: Sequence[int], generator: Generators, device: torch.device,
          dtype: torch.dtype) -> torch.Tensor:
    """A standard normal tensor of ``shape`` (batch first) on ``device`` in ``dtype``."""
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=torch.float32).to(dtype)
    if isinstance(generator, torch.Generator):
        z = torch.randn(tuple(shape), generator=generator, device=generator.device,
                        dtype=torch.float32)
    else:
        z = torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device,
                                     dtype=torch.float32) for g in generator])
    return to_device(z, device).to(dtype)


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` on ``device`` as a tensor of its own; host to GPU through pinned memory and
    an asynchronous copy (a pageable copy would stall the host until the GPU caught up).

    The pinned block comes from PyTorch's caching host allocator, which hands it out again
    only once the copy that reads it has run.
    """
    device = torch.device(device)
    if values.device.type == "cpu" and device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device, copy=True)


class NoiseSource:
    """Draws successive N(0, I) tensors of one shape into reused buffers (no per-step allocation).

    The returned tensor is overwritten by the next call: use it before drawing again. CPU draws
    for a CUDA sample go through pinned memory and an asynchronous copy (no host sync). The
    pinned buffer is taken afresh from PyTorch's caching host allocator for every draw: it
    hands a block out again only once the copy that read it has run, so a draw can never
    overwrite numbers the GPU has not copied yet.
    """

    def __init__(self, shape: Sequence[int], generator: Generators, device: torch.device,
                 dtype: torch.dtype) -> None:
        self._generator = generator
        self._shape = tuple(shape)
        draw_device = device if generator is None else _generator_device(generator)
        same = draw_device == device and dtype == torch.float32
        self._pinned = not same and draw_device.type == "cpu" and device.type == "cuda"
        self._draw = None if self._pinned else torch.empty(
            self._shape, device=draw_device, dtype=torch.float32)
        self._out = self._draw if same else torch.empty(self._shape, device=device, dtype=dtype)

    def __call__(self) -> torch.Tensor:
        """The next draw, shaped like the sample."""
        draw = (torch.empty(self._shape, dtype=torch.float32, pin_memory=True) if self._pinned
                else self._draw)
        g = self._generator
        if g is None or isinstance(g, torch.Generator):
            draw.normal_(generator=g)
        else:
            for row, gen in zip(draw, g, strict=True):
                row.normal_(generator=gen)
        if self._out is not draw:
            self._out.copy_(draw, non_blocking=self._pinned)
        return self._out


def _generator_device(generator: Generators) -> torch.device:
    g = generator if isinstance(generator, torch.Generator) else generator[0]
    return torch.device(g.device)


def _check_device(gen_device: torch.device, device: torch.device, what: str) -> None:
    gen_device = torch.device(gen_device)
    if gen_device.type != "cpu" and not _same_device(gen_device, device):
        raise ValueError(f"{what} is on {gen_device} but samples are on {device}; use a CPU "
                         f"generator (same numbers on every device) or one on {device}")


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == (
        b.index if b.index is not None else current)


# ---------------------------------------------------------------- per-sample seeds
SEED_RULE = "numpy.random.SeedSequence([seed, index]).generate_state(1, numpy.uint64)[0]"


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` in a run with seed ``seed`` (both integers >= 0).

    ``SeedSequence([seed, index])`` hashes the pair into a 64-bit seed (see :data:`SEED_RULE`),
    so distinct pairs give unrelated streams: unlike ``seed * K + index`` no two runs share
    samples, whatever their sizes.
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def sample_generators(seed: int, start: int, stop: int) -> list[torch.Generator]:
    """CPU generators for samples ``start .. stop-1`` of a run (see :func:`sample_seed`)."""
    return [torch.Generator().manual_seed(sample_seed(seed, i)) for i in range(start, stop)]
