"""End-to-end images/s on the bundled digits model at S=50: ddim (eager and each acceleration
mode) against diffusers' DDIMPipeline, measured side by side in one run.

    python benchmarks/throughput.py [--batch 1 64] [--rounds 5] [--threads 1]

Each round runs every method once, in turn (interleaved, so that machine noise hits all
alike); the table reports the median over rounds and the time relative to DDIMPipeline.
Acceleration is built (and checked against eager) before timing starts. DDIMPipeline returns
numpy images (`output_type="np"`), so its post-processing is included, as a user pays for
it; ddim returns the float tensor. Nothing runs under `inference_mode` (the pipeline uses
`no_grad` itself; ddim's loop does too), so compiled graphs are not invalidated.
Writes benchmarks/results/throughput.md atomically.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
import warnings
from pathlib import Path

import torch
from diffusers import DDIMPipeline, DDIMScheduler

import ddim
from ddim.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
MODES = [("eager", ()), ("trace", ("trace",)), ("channels_last", ("channels_last",)),
         ("trace + channels_last", ("trace", "channels_last")),
         ("autocast bf16", ("autocast_bf16",)), ("compile", ("compile",))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", nargs="*", default=[], help="mode names to leave out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = ddim.load_pretrained("digits")
    pipe = DDIMPipeline(unet=model.model, scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)

    lines = [f"`benchmarks/throughput.py`, {datetime.date.today()}, torch {torch.__version__}, "
             f"{args.threads} thread(s), S = {args.steps}, bundled digits model; median of "
             f"{args.rounds} interleaved rounds.", "",
             "| batch | method | images/s | time vs DDIMPipeline |", "|---|---|---|---|"]
    for batch in args.batch:
        methods = {"diffusers DDIMPipeline": lambda b=batch: pipe(
            batch_size=b, num_inference_steps=args.steps, eta=0.0, output_type="np")}
        for name, modes in MODES:
            if name in args.skip:
                continue
            fast = ddim.accelerate(model, *modes) if modes else model
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ddim.sample(fast, 2, batch_size=batch)  # build + check before timing
            if modes and fast.model.fallbacks:
                print(f"{name}: fell back: {fast.model.fallbacks}")
                continue
            del caught
            methods[f"ddim, {name}"] = lambda f=fast, b=batch: ddim.sample(
                f, args.steps, batch_size=b)
        times = {k: [] for k in methods}
        for _ in range(args.rounds):
            for k, fn in methods.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        ref = statistics.median(times["diffusers DDIMPipeline"])
        for k, ts in times.items():
            med = statistics.median(ts)
            lines.append(f"| {batch} | {k} | {batch / med:.1f} | {med / ref:.2f}× |")
            print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "throughput.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
