"""Float32 that means float32: a scoped switch for bit-stable runs on GPUs.

On NVIDIA GPUs since Ampere, cuDNN convolutions use TF32 by default
(``torch.backends.cudnn.allow_tf32`` is True), which rounds their inputs to 10 mantissa bits:
float32 results then differ from the CPU's by ~1e-3 relative per forward (6.2e-4 measured on
a CIFAR-size UNet on an H200, 2.0e-6 with TF32 off), and sampling amplifies that over the
steps. So "a CPU generator gives the same result on CUDA" holds to the bit for the noise
(drawn on the CPU), and for the samples to what the network's arithmetic allows: ~1e-4 with
TF32 off, ~1e-2 with it on (max |CUDA - CPU| after 10 DDIM steps of the tiny UNet, measured
on that H200).

The library never changes these global flags behind the caller's back. Callers who want
float32 arithmetic on the GPU ask for it, for a block:

    with ddim.strict_float32():
        x = ddim.sample(model, 50, generator=gens)   # TF32 off, deterministic cuDNN

and the flags are restored when the block ends (also on an error). The acceleration checks
(:mod:`ddim.acceleration.accelerate`) use the same switch to measure the device's own float32 noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def strict_float32(deterministic: bool = True) -> Iterator[None]:
    """While the block runs: no TF32 in cuDNN convolutions or CUDA matmuls, matmul precision
    "highest", and (``deterministic``) deterministic cuDNN algorithms without autotuning.

    Restores every flag it touched afterwards. Process-wide (these are global switches):
    other threads running CUDA work meanwhile see them too. No effect on CPU arithmetic.
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, torch.get_float32_matmul_precision(),
             cudnn.deterministic, cudnn.benchmark)
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        if deterministic:
            cudnn.deterministic, cudnn.benchmark = True, False
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])
        cudnn.deterministic, cudnn.benchmark = saved[3], saved[4]
