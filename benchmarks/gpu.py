"""Sampling speed on a GPU: every acceleration mode against the bare UNet loop and diffusers'
DDIMPipeline, side by side in one run (under 5 minutes on one H200), plus bf16's quality.

    python benchmarks/gpu.py                       # CUDA: the full table (+ bf16 FD check)
    python benchmarks/gpu.py --device cpu --quick  # the same code path on a CPU, small

Models (random-init unless bundled, no download): the google/ddpm-cifar10-32 architecture
(35.7M parameters) at batch 1 and 64, and the bundled `digits` model at batch 1 and 256.
Methods, each timed as ms per sampling call of S = 50 steps (median of interleaved rounds,
``torch.cuda.synchronize()`` around every call):

- ``bare UNet ×S``: S forwards on a fixed input under inference_mode: the floor;
- ``DDIMPipeline``: diffusers, ``output_type="pt"``;
- ``ddim eager``, ``cuda_graph`` (one graph per forward), ``bf16 + cuda_graph``,
  ``graph_loop`` (the whole loop as one graph), ``bf16 + graph_loop``, and
  ``channels_last + bf16 + compile + graph_loop`` (``--compile``; first use compiles).

Also: kernel launches per step of the eager loop against the bare forward (torch.profiler),
and (``--quality``, CUDA) the FD of 1000 digits at S = 50 in bf16 against fp32, 3 seeds.
TF32 is left as the caller has it (PyTorch's default); the report states the flags.
Results: benchmarks/results/gpu.md (or --out), written atomically.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import ddim
from ddim.atomic import atomic_write_text
from ddim.maths.grids import timesteps
from ddim.sampling.noise import sample_generators

RESULTS = Path(__file__).parent / "results"


def cifar_unet():
    """The google/ddpm-cifar10-32 architecture (35.7M parameters), random init."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
        layers_per_block=2, norm_num_groups=32,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ).eval().requires_grad_(False)


def bundle(name: str, device: str) -> ddim.Pretrained:
    if name == "digits":
        return ddim.load_pretrained("digits", device=device)
    return ddim.Pretrained(cifar_unet().to(device), ddim.NoiseSchedule.linear(), (3, 32, 32),
                           name="cifar10-32 architecture")


def methods(model: ddim.Pretrained, batch: int, steps: int, device: str,
            compile_: bool) -> dict[str, Callable[[], object]]:
    from diffusers import DDIMPipeline, DDIMScheduler

    x = torch.randn((batch, *model.sample_shape), device=device)
    t_rows = [t.expand(batch).to(device) for t in timesteps(model.schedule, steps)]

    def bare():
        with torch.inference_mode():
            for t in t_rows:
                model.model(x, t, return_dict=False)
    pipe = DDIMPipeline(unet=model.model, scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    out = {"bare UNet ×S": bare,
           "DDIMPipeline": lambda: pipe(batch_size=batch, num_inference_steps=steps,
                                        output_type="pt", return_dict=False)}
    variants = [("ddim eager", ()), ("ddim cuda_graph", ("cuda_graph",)),
                ("ddim bf16 + cuda_graph", ("autocast_bf16", "cuda_graph")),
                ("ddim graph_loop", ("graph_loop",)),
                ("ddim bf16 + graph_loop", ("autocast_bf16", "graph_loop"))]
    if compile_:
        variants.append(("ddim channels_last + bf16 + compile + graph_loop",
                         ("channels_last", "autocast_bf16", "compile", "graph_loop")))
    for name, modes in variants:
        fast = ddim.accelerate(model, *modes) if modes else model
        out[name] = (lambda f=fast: ddim.sample(f, steps, batch_size=batch, device=device,
                                               generator=sample_generators(0, 0, batch)))
    return out


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def table(device: str, steps: int, rounds: int, cases, compile_: bool) -> list[str]:
    lines = ["| model, batch | method | ms per call | images/s | vs DDIMPipeline | note |",
             "|---|---|---:|---:|---:|---|"]
    for name, batch in cases:
        model = bundle(name, device)
        ms = methods(model, batch, steps, device, compile_)
        notes = {}
        for label, fn in ms.items():  # build, check and warm up everything before timing
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn()
            notes[label] = "; ".join(str(w.message).split("; running")[0].removeprefix(
                "ddim.acceleration.accelerate: ") for w in caught if w.category is RuntimeWarning)
        times = {label: [] for label in ms}
        for r in range(rounds):
            order = list(ms)[r % len(ms):] + list(ms)[:r % len(ms)]
            for label in order:
                times[label].append(timed(ms[label], device))
        pipe = statistics.median(times["DDIMPipeline"])
        for label, ts in times.items():
            med = statistics.median(ts)
            lines.append(f"| {name}, b{batch} | {label} | {med * 1e3:.1f} | {batch / med:.1f} | "
                         f"{med / pipe:.3f} | {notes[label]} |")
        print("\n".join(lines[-len(ms):]), file=sys.stderr, flush=True)
    return lines


def launches(device: str, steps: int) -> list[str]:
    """Kernel launches per step: the eager ddim loop against the bare forward (digits, b1)."""
    from torch.profiler import ProfilerActivity, profile

    model = bundle("digits", device)
    kind = ProfilerActivity.CUDA if device.startswith("cuda") else ProfilerActivity.CPU
    x = torch.randn((1, *model.sample_shape), device=device)
    t = torch.full((1,), 500, device=device)
    counts = {}
    for label, fn in (("bare forward", lambda: model.model(x, t, return_dict=False)),
                      ("ddim.sample, per step", lambda: ddim.sample(model, steps, x_T=x))):
        with torch.inference_mode():
            fn()
            with profile(activities=[kind]) as prof:
                fn()
        events = [e for e in prof.events() if (e.device_type.name == "CUDA") ==
                  device.startswith("cuda")]
        counts[label] = len(events) / (steps if "per step" in label else 1)
    return ["| | kernels (CUDA) or ops (CPU) |", "|---|---:|"] + [
        f"| {k} | {v:.1f} |" for k, v in counts.items()]


def quality(device: str, steps: int) -> list[str]:
    """FD of 1000 digits at S steps, fp32 against bf16 (+ graph_loop), seeds 0, 1, 2."""
    from ddim.evaluation.classifiers import load_digits_classifier
    from ddim.evaluation.digits import load_digits_images
    from ddim.evaluation.frechet import extract_features, fd_from_features

    clf = load_digits_classifier(device)
    ref = extract_features(load_digits_images()[0].to(device), clf.features)
    model = bundle("digits", device)
    lines = ["| digits, S = 50, n = 1000 | seed 0 | seed 1 | seed 2 |", "|---|---:|---:|---:|"]
    for label, modes in (("fp32", ()), ("bf16 + graph_loop", ("autocast_bf16", "graph_loop"))):
        fast = ddim.accelerate(model, *modes) if modes else model
        fds = []
        for seed in (0, 1, 2):
            x = ddim.sample(fast, steps, batch_size=1000, device=device,
                            generator=sample_generators(seed, 0, 1000)).clamp(-1, 1)
            fds.append(fd_from_features(extract_features(x, clf.features), ref))
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in fds) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="digits b1 only, S=5, 1 round")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="add the compiled configuration")
    p.add_argument("--quality", action="store_true", help="bf16 FD check (CUDA)")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu.md")
    args = p.parse_args(argv)
    steps, rounds = (5, 1) if args.quick else (args.steps, args.rounds)
    cases = [("digits", 1)] if args.quick else [("cifar", 1), ("cifar", 64), ("digits", 1),
                                                ("digits", 256)]
    started = time.perf_counter()
    import diffusers

    where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
             else "CPU")
    lines = [f"# `benchmarks/gpu.py` on {where}", "",
             f"{datetime.date.today()}; torch {torch.__version__}, diffusers "
             f"{diffusers.__version__}, ddim {ddim.__version__}; S = {steps}, median of "
             f"{rounds} interleaved rounds; cuDNN TF32 {torch.backends.cudnn.allow_tf32}, "
             f"matmul TF32 {torch.backends.cuda.matmul.allow_tf32}.", "",
             *table(args.device, steps, rounds, cases, args.compile), "",
             "Launches per step of the eager loop (digits, b1):", "",
             *launches(args.device, steps)]
    if args.quality:
        lines += ["", "bf16 quality (FD against all 1797 real digits):", "",
                  *quality(args.device, steps)]
    lines += ["", f"Wall time of this run: {time.perf_counter() - started:.0f} s."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
