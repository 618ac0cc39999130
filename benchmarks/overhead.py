"""Sampler overhead: wall time of a whole S-step sampling call against S bare UNet calls.

    python benchmarks/overhead.py            # full: more rounds (~15-30 min on 1 core)
    python benchmarks/overhead.py --quick    # fewer rounds, same models and methods
    python benchmarks/overhead.py --threads 4 --models tiny1,tiny16
    python benchmarks/overhead.py --contexts # the plain call in each grad mode (~1 min)
    python benchmarks/overhead.py --null     # only the loops with a null model (~2 min)

For each model (random-init diffusers ``UNet2DModel``s, no download) the methods below run
interleaved: every round runs each of them once, in an order rotated from round to round, so
that drift (thermal, other jobs) hits all of them alike. Everything runs under
``torch.inference_mode()`` with ``torch.set_num_threads(--threads)`` (default 1).

Reported per method, medians over rounds:

- ``time / bare``: its wall time over the same round's bare wall time, as asked. On a shared or
  busy machine the UNet's own run-to-run noise (10-50 % per call there) swamps the samplers'
  overhead in this number, so the UNet's ``forward`` is also timed inside every run (two
  ``perf_counter`` calls per model call, the same wrapper for every method), giving
- ``outside UNet / step``: (wall - time inside the UNet) / S, the sampler's own cost per step
  in that very run, free of the UNet's noise;
- ``overhead / step``: that minus the bare loop's, in µs (the number to compare);
- ``est. time / bare``: 1 + S·overhead/step / bare time, the ratio that overhead implies.

What each method includes (S=50 model calls in every one):

- ``bare``: S calls ``unet(x, t, return_dict=False)`` on one fixed x, t an int64 (B,) tensor
  of the leading grid; nothing else (no noise, no update, no result handling).
- ``floor``: bare calls on an evolving x plus what no DDIM loop can skip: the two update kernels
  (x·a + out·b) and a per-step NaN probe (out.sum() into a preallocated tensor). On a CPU the
  distance from bare to floor is the cost of three small eager ops run right after a UNet call.
- ``ddim.sample η=0`` / ``η=1``: ``ddim.sample(unet, S, eta, batch_size=B, generator=g)``:
  argument checks, grid and coefficients, drawing x_T, per step the model call through the
  adapter, the output shape check, the NaN probe, the DDIM update and (η=1) the noise draw,
  then the one finiteness check.
- ``ddim.sample + progress + callback``: η=0 with ``progress=True`` (tqdm, its output sent to
  /dev/null during the timing) and a callback that appends the step index to a list.
- ``DDIMPipeline``: ``DDIMPipeline(unet, DDIMScheduler(clip_sample=False))`` called with
  ``output_type="pt"`` (diffusers 0.42 supports "pil", "np" and "pt"; "pt" skips the
  host/numpy/PIL conversion, so that cost is not counted; the ``(x/2 + 0.5).clamp(0, 1)``
  rescale it always does is) and its progress bar disabled; it draws x_T, calls
  ``set_timesteps`` and per step ``unet(x, t).sample`` + ``scheduler.step``.
- ``diffusers hand loop``: ``set_timesteps``, ``torch.randn`` x_T, then per step
  ``unet(x, t, return_dict=False)`` + ``scheduler.step(..., return_dict=False)``.

Both samplers use the same grid (leading spacing, ᾱ_prev = 1 after the last step); the script
checks that they return the same η=0 sample from the same x_T before timing.

A second table times the loops alone with a "null model" (returns a cached tensor): the pure
per-step cost of each sampler at each shape, free of the UNet's timing noise.

Results: printed as markdown and written to benchmarks/results/overhead.md (temp file +
os.replace, so a reader never sees a half-written file).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import ddim
from ddim.maths.grids import timesteps
from ddim.sampling.solvers import SOLVERS

RESULTS = Path(__file__).resolve().parent / "results"

MODELS = {
    # name: (description, batch, builder kwargs)
    "tiny1": ("tiny 8×8×1 UNet (32, 64)", 1, "tiny"),
    "tiny16": ("tiny 8×8×1 UNet (32, 64)", 16, "tiny"),
    "cifar16": ("CIFAR-size 32×32×3 UNet (64, 128, 128), attention at 16×16", 16, "cifar"),
}
# rounds per model: (full, quick)
ROUNDS = {"tiny1": (21, 9), "tiny16": (11, 5), "cifar16": (3, 2)}
NULL_ROUNDS = (201, 61)
CONTEXT_ROUNDS = (15, 7)


def build_unet(kind: str):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    if kind == "tiny":
        unet = UNet2DModel(
            sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
            layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
        )
    else:  # DDPM-CIFAR10-like layout, narrower: ~4.4M parameters
        unet = UNet2DModel(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        )
    return unet.eval().requires_grad_(False)


class ForwardTimer:
    """Wraps ``module.forward`` (an instance attribute, so ``module(...)`` and every diffusers
    code path go through it) and adds up the seconds spent inside."""

    def __init__(self, module) -> None:
        self.inside = 0.0
        inner = module.forward

        def forward(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.inside += time.perf_counter() - t0

        module.forward = forward


def make_methods(unet, batch: int, steps: int) -> dict[str, Callable[[], object]]:
    """The timed callables for one model, all producing a batch of samples."""
    from diffusers import DDIMPipeline, DDIMScheduler

    cfg = unet.config
    shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    x_fixed = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    grid = timesteps(ddim.NoiseSchedule.linear(), steps)  # leading, as DDIMScheduler's default
    t_rows = [t.expand(batch).contiguous() for t in grid]

    def bare():
        for t in t_rows:
            out = unet(x_fixed, t, return_dict=False)[0]
        return out

    def floor():
        # the least any DDIM loop does: bare calls on the evolving x, plus the two update
        # kernels and a per-step NaN probe (fixed coefficients, no grid logic, no noise)
        x, probes = x_fixed.clone(), torch.empty(steps)
        for i, t in enumerate(t_rows):
            out = unet(x, t, return_dict=False)[0]
            probes[i] = out.sum()
            x = x.mul(0.999).add_(out, alpha=-0.001)
        return x

    def ours(eta: float, **kw):
        return lambda: ddim.sample(unet, steps, eta, batch_size=batch,
                                   generator=torch.Generator().manual_seed(0), **kw)

    solvers = {f"ddim.sample solver={s}": ours(0.0, solver=s) for s in SOLVERS if s != "ddim"}

    seen: list[int] = []

    def callback(i, t, x, x0):
        seen.append(i)

    def ours_progress():
        seen.clear()
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            return ddim.sample(unet, steps, 0.0, batch_size=batch, progress=True,
                               callback=callback, generator=torch.Generator().manual_seed(0))

    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)

    def pipeline():
        return pipe(batch_size=batch, generator=torch.Generator().manual_seed(0), eta=0.0,
                    num_inference_steps=steps, output_type="pt", return_dict=False)[0]

    hand_sched = DDIMScheduler(clip_sample=False)

    def hand(eta: float):
        return lambda: diffusers_loop(unet, hand_sched, shape, steps, eta)

    return {
        "bare UNet calls": bare,
        "floor: bare + update + NaN probe": floor,
        "ddim.sample η=0": ours(0.0),
        "ddim.sample η=1": ours(1.0),
        **solvers,
        "ddim.sample η=0 + progress + callback": ours_progress,
        "diffusers DDIMPipeline η=0 (pt)": pipeline,
        "diffusers hand loop η=0": hand(0.0),
        "diffusers hand loop η=1": hand(1.0),
    }


def diffusers_loop(model, scheduler, shape, steps: int, eta: float, x=None):
    g = torch.Generator().manual_seed(0)
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=g) if x is None else x
    for t in scheduler.timesteps:
        out = model(x, t, return_dict=False)[0]
        x = scheduler.step(out, t, x, eta=eta, generator=g, return_dict=False)[0]
    return x


def null_methods(shape, steps: int) -> dict[str, Callable[[], object]]:
    """The loops alone: the model is a function returning a cached tensor."""
    from diffusers import DDIMScheduler

    cached = 0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(2))

    def null(x, t, return_dict=False):
        return (cached,)

    def ours(eta, solver="ddim"):
        return lambda: ddim.sample(lambda x, t: cached, steps, eta, shape=shape, solver=solver,
                                   generator=torch.Generator().manual_seed(0))

    sched = DDIMScheduler(clip_sample=False)
    return {
        "ddim.sample η=0": ours(0.0),
        "ddim.sample η=1": ours(1.0),
        **{f"ddim.sample solver={s}": ours(0.0, s) for s in SOLVERS if s != "ddim"},
        "diffusers hand loop η=0": lambda: diffusers_loop(null, sched, shape, steps, 0.0),
        "diffusers hand loop η=1": lambda: diffusers_loop(null, sched, shape, steps, 1.0),
    }


def context_methods(unet, steps: int) -> dict[str, tuple[Callable[[], object], str]]:
    """The plain call and the call inside each grad mode a caller may be in, with the bare
    loop each is compared with: {name: (callable, name of its bare loop)}. Nothing here runs
    inside the script's own inference_mode."""
    cfg = unet.config
    x = torch.randn((1, cfg.in_channels, cfg.sample_size, cfg.sample_size),
                    generator=torch.Generator().manual_seed(1))
    t_rows = [t.expand(1).contiguous() for t in timesteps(ddim.NoiseSchedule.linear(), steps)]

    def within(context, fn):
        def call():
            with context():
                return fn()
        return call

    def bare():
        for t in t_rows:
            out = unet(x, t, return_dict=False)[0]
        return out

    def ours(solver="ddim"):
        return lambda: ddim.sample(unet, steps, solver=solver,
                                   generator=torch.Generator().manual_seed(0))

    inference, no_grad = "bare ×S in inference_mode", "bare ×S in no_grad"
    return {
        inference: (within(torch.inference_mode, bare), inference),
        no_grad: (within(torch.no_grad, bare), no_grad),
        "ddim.sample, plain call (grad mode on)": (ours(), inference),
        "ddim.sample in the caller's inference_mode": (within(torch.inference_mode, ours()),
                                                       inference),
        "ddim.sample in the caller's no_grad": (within(torch.no_grad, ours()), no_grad),
        **{f"ddim.sample solver={s}, plain call": (ours(s), inference)
           for s in SOLVERS if s != "ddim"},
    }


def context_table(steps: int, rounds: int) -> list[str]:
    """Thread CPU time of each context method over its bare loop's, median of interleaved
    rounds (issue 13's measure: what the plain call pays against the floor)."""
    unet = build_unet("tiny")
    methods = context_methods(unet, steps)
    for fn, _ in methods.values():
        fn()  # warm up: allocator, lazy imports, the memoised setup
    names = list(methods)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        gc.collect()
        gc.disable()
        try:
            for name in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.thread_time()
                methods[name][0]()
                seconds[name].append(time.thread_time() - t0)
        finally:
            gc.enable()
    lines = [f"Tiny 8×8×1 UNet (32, 64), B=1, S={steps}: thread CPU time over the bare loop "
             f"of the same round (median and quartiles of {rounds} interleaved rounds):", "",
             "| call | its bare loop | CPU time / bare | median ms |", "|---|---|---:|---:|"]
    for name in names:
        base = methods[name][1]
        ratios = [a / b for a, b in zip(seconds[name], seconds[base], strict=True)]
        lines.append(f"| {name} | {base} | {fmt_range(*quartiles(ratios), 3)} | "
                     f"{statistics.median(seconds[name]) * 1e3:.1f} |")
    return lines


def run_rounds(methods: dict[str, Callable[[], object]], rounds: int, warmup: Callable[[], None],
               timer: ForwardTimer | None = None
               ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call of each method, ``rounds`` times, interleaved in a rotating order;
    and the seconds of each call spent inside the timed model (zeros without a timer)."""
    warmup()
    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    inside: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        gc.collect()  # once per round (it takes ~0.1-0.5 s with diffusers loaded) ...
        gc.disable()  # ... and no collection inside a timed call
        try:
            for name in order:
                if timer is not None:
                    timer.inside = 0.0
                t0 = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - t0)
                inside[name].append(timer.inside if timer is not None else 0.0)
        finally:
            gc.enable()
    return times, inside


def check_same_samples(unet, steps: int) -> tuple[float, float]:
    """Max |ours - diffusers| for the η=0 sample from one x_T (must be float32 rounding)."""
    from diffusers import DDIMScheduler

    cfg = unet.config
    x_T = torch.randn((2, cfg.in_channels, cfg.sample_size, cfg.sample_size),
                      generator=torch.Generator().manual_seed(3))
    ours = ddim.sample(unet, steps, 0.0, x_T=x_T, spacing="leading")  # DDIMScheduler's grid
    ref = diffusers_loop(unet, DDIMScheduler(clip_sample=False), x_T.shape, steps, 0.0, x=x_T)
    return (ours - ref).abs().max().item(), ref.abs().max().item()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    v = sorted(values)
    if len(v) < 4:
        return v[0], statistics.median(v), v[-1]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], q[1], q[2]


def fmt_range(lo: float, mid: float, hi: float, digits: int) -> str:
    return f"{mid:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (same models, methods)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--steps", type=int, default=50, help="S, model calls per sample (50)")
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: results/overhead.md, or results/overhead_contexts.md")
    ap.add_argument("--contexts", action="store_true",
                    help="only the grad-mode table: the plain call and the call in each grad "
                         "mode against the bare loop, by thread CPU time (~1 min)")
    ap.add_argument("--null", action="store_true",
                    help="only the null-model table: each sampler's loop alone, µs per step")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    if args.threads < 1 or args.steps < 1:
        ap.error("--threads and --steps must be >= 1")
    torch.set_num_threads(args.threads)
    pick = 1 if args.quick else 0
    steps = args.steps
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    started = time.perf_counter()

    import diffusers

    if args.contexts:
        lines = [f"# The plain call against the floor ({datetime.date.today()}, torch "
                 f"{torch.__version__}, {args.threads} thread, {cpu_name()}, load {load:.2f})",
                 "", *context_table(steps, CONTEXT_ROUNDS[pick])]
        text = "\n".join(lines) + "\n"
        print(text)
        write_atomic(args.out or RESULTS / "overhead_contexts.md", text)
        return 0

    main_rows, null_rows, notes = [], [], {}
    units, timers = {}, {}
    with torch.inference_mode():
        for name in [] if args.null else models:
            desc, batch, kind = MODELS[name]
            if kind not in units:
                units[kind] = build_unet(kind)
                diff, scale = check_same_samples(units[kind], steps)
                notes[kind] = (f"{desc}: max |ddim - diffusers| over an η=0 sample from one x_T"
                               f" = {diff:.1e} (max |x0| {scale:.1f}; float32 rounding)")
                timers[kind] = ForwardTimer(units[kind])
            unet, timer = units[kind], timers[kind]
            n_params = sum(p.numel() for p in unet.parameters())
            methods = make_methods(unet, batch, steps)
            rounds = ROUNDS[name][pick]

            def warmup(methods=methods):
                for f in methods.values():  # one full call each: allocator, lazy imports
                    f()

            if kind == "cifar":  # a full call takes ~35 s here: warm up with the bare loop
                def warmup(methods=methods):
                    methods["bare UNet calls"]()

            print(f"[{time.perf_counter() - started:6.0f}s] {name}: {rounds} rounds ...",
                  file=sys.stderr, flush=True)
            times, inside = run_rounds(methods, rounds, warmup, timer)
            bare, bare_in = times["bare UNet calls"], inside["bare UNet calls"]
            bare_out = [b - i for b, i in zip(bare, bare_in, strict=True)]
            call_ms = statistics.median(bare_in) / steps * 1e3
            label = f"{desc}, B={batch} ({n_params / 1e6:.2f}M params, {call_ms:.1f} ms/call)"
            for method, ts in times.items():
                ratios = [t / b for t, b in zip(ts, bare, strict=True)]
                outside = [(t - i) / steps * 1e6 for t, i in zip(ts, inside[method], strict=True)]
                per_step = [o - bo / steps * 1e6 for o, bo in zip(outside, bare_out, strict=True)]
                est = 1 + statistics.median(per_step) * 1e-6 * steps / statistics.median(bare)
                main_rows.append((label, method, statistics.median(ts), quartiles(ratios),
                                  quartiles(outside), quartiles(per_step), est, rounds))

        for name in models:  # null-model loops, per distinct shape
            desc, batch, kind = MODELS[name]
            cfg = (units[kind] if kind in units else build_unet(kind)).config
            shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
            methods = null_methods(shape, steps)
            rounds = NULL_ROUNDS[pick]
            times, _ = run_rounds(methods, rounds, lambda m=methods: [f() for f in m.values()])
            for method, ts in times.items():
                null_rows.append((f"B×C×H×W = {'×'.join(map(str, shape))}", method,
                                  quartiles([t / steps * 1e6 for t in ts]), rounds))

    elapsed = time.perf_counter() - started
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        "# Sampler overhead: whole sampling call vs S bare UNet calls",
        "",
        f"- date: {now}; wall time of this run: {elapsed / 60:.1f} min"
        f"{' (--quick)' if args.quick else ''}",
        f"- torch {torch.__version__}, diffusers {diffusers.__version__}, ddim "
        f"{ddim.__version__}, Python {platform.python_version()}",
        f"- torch threads: {args.threads}; CPU: {cpu_name()} ({os.cpu_count()} logical); "
        f"1-min load average at start: {load:.2f}",
        f"- S = {steps} model calls per sample, fp32, `torch.inference_mode()`, random-init "
        "UNets; x_T drawn by each sampler from a seeded CPU generator",
        "- time / bare: wall time over the same round's bare wall time (noisy on a busy "
        "machine); outside UNet / step: (wall - time inside UNet.forward)/S of the same run; "
        "overhead / step: that minus the bare loop's; est. time / bare: 1 + S·overhead/bare. "
        "Medians over interleaved rounds, (first–third quartile) in brackets",
        "",
        "| model | method | rounds | median time (s) | time / bare | outside UNet / step (µs) "
        "| overhead / step (µs) | est. time / bare |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, method, med, ratio_q, out_q, step_q, est, rounds in main_rows:
        if method == "bare UNet calls":
            lines.append(f"| {label} | {method} | {rounds} | {med:.3f} | 1 | "
                         f"{fmt_range(*out_q, 0)} | 0 | 1 |")
        else:
            lines.append(f"| {label} | {method} | {rounds} | {med:.3f} | "
                         f"{fmt_range(*ratio_q, 3)} | {fmt_range(*out_q, 0)} | "
                         f"{fmt_range(*step_q, 0)} | {est:.4f} |")
    lines += [
        "",
        "Loops alone (null model returning a cached tensor), µs per step:",
        "",
        "| shape | method | rounds | µs per step |",
        "|---|---|---:|---:|",
    ]
    for shape, method, q, rounds in null_rows:
        lines.append(f"| {shape} | {method} | {rounds} | {fmt_range(*q, 0)} |")
    lines += ["", "Notes:", ""]
    lines += [f"- {n}" for n in notes.values()]
    lines += [
        "- `bare` includes no update: the samplers' overhead is their setup, x_T draw, per-step "
        "update/noise/bookkeeping and (pipeline) the output rescale.",
        "- DDIMPipeline is timed with `output_type=\"pt\"`; its default \"pil\" (and \"np\") add a "
        "host copy, a permute and numpy/PIL conversion that no other method pays.",
        "- The UNet wrapper costs the same ~1 µs per call in every method (bare included), so it "
        "cancels in overhead / step; the null-model table has no wrapper.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or RESULTS / ("overhead_null.md" if args.null else "overhead.md")
    write_atomic(out, text)
    print(f"written to {out}", file=sys.stderr)
    return 0


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


if __name__ == "__main__":
    sys.exit(main())
