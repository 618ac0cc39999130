"""Sample quality against model calls for every solver, ours and diffusers' side by side.

    python benchmarks/solvers.py                    # run (or resume) every cell, then report
    python benchmarks/solvers.py --report           # only rebuild the table and the plot
    python benchmarks/solvers.py --model mnist      # the 28×28 model (its classifier, held out)

For each model-call budget S in {3, 4, 5, 6, 8, 10, 15, 20, 50}, n samples (default 1000) are
drawn from the same x_T (seed rule of ``ddim generate``: sample i of seed s uses
``ddim.sampling.noise.sample_generators(s, i, i + 1)``) by

- ddim's solvers through ``ddim.sample(model, S, solver=...)`` on the default grid (trailing:
  t = round(T - i·T/S) - 1), η = 0 for ``ddim``;
- diffusers' schedulers on the same trailing grid: ``DDIMScheduler`` (η = 0),
  ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2 and 3; sde-dpmsolver++),
  ``UniPCMultistepScheduler`` (bh2, order 2), each with ``lower_order_final=True`` and a final
  step onto ᾱ = 1, driven by a hand loop (their noise from a seeded CPU generator);
- grid variants (ours only): the same solvers on the ``time_quadratic`` spacing (quadratic in
  time from T-1 down to T/100), and, up to 10 calls, on a grid uniform in log-SNR
  (``"logsnr"``: λ = log(√ᾱ/√(1-ᾱ)) evenly spaced from λ(T-1) to λ(0), rounded to timesteps).
  The time-quadratic grid's end point T/100 was chosen on seed 100 (n = 500), apart from the
  seeds 0-2 reported here.

FD is measured in the features of the model's classifier (digits: the bundled digits
classifier against all 1797 real digits; mnist: the MNIST classifier against the held-out
digits). A class-conditional model (mnist) samples n/10 of each class (sample i has label
i·10 // n), no guidance. Budgets up to 10 calls run 3 seeds (0, 1, 2); the others seed 0.
Each finished cell is saved at once to results/solvers_<model>_cells.json, so an interrupted
run resumes.

Outputs: results/solvers_<model>.md (table) and solvers_<model>.png (FD against model calls).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import ddim
from ddim.atomic import atomic_write_text
from ddim.evaluation.frechet import extract_features, fd_from_features
from ddim.sampling.noise import sample_generators

sys.path.insert(0, str(Path(__file__).parent))
from cells import key, load_cells, save_cells  # noqa: E402  (benchmarks/cells.py)

RESULTS = Path(__file__).parent / "results"
BUDGETS = [3, 4, 5, 6, 8, 10, 15, 20, 50]
SEEDED = 10  # budgets up to this many calls run 3 seeds
SOLVERS = ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde"]
GRIDS = ["trailing", "time_quadratic", "logsnr"]


def logsnr_grid(schedule: ddim.NoiseSchedule, steps: int) -> list[int]:
    """S timesteps evenly spaced in λ from λ(T-1) down to λ(0), rounded to the nearest
    training step with that λ (strictly decreasing; repeats pushed down by one)."""
    a = schedule.alphas_cumprod
    lam = 0.5 * (a.log() - (1 - a).log())  # decreasing in t
    targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    grid = [int((lam - v).abs().argmin()) for v in targets]
    for i in range(1, len(grid)):
        grid[i] = min(grid[i], grid[i - 1] - 1)
    if grid[-1] < 0:
        raise ValueError(f"{steps} steps do not fit a log-SNR grid of {len(a)} timesteps")
    return grid


def plan(seeds_upto: int = SEEDED) -> list[dict]:
    """Every cell, cheapest first within a seed; seed 0 first everywhere."""
    cells = []
    for seed in (0, 1, 2):
        for steps in BUDGETS:
            if seed and steps > seeds_upto:
                continue
            for solver in SOLVERS:
                for impl in ("ddim", "diffusers"):
                    cells.append(dict(impl=impl, solver=solver, steps=steps, seed=seed,
                                      grid="trailing"))
            cells += [dict(impl="ddim", solver=s, steps=steps, seed=seed, grid="time_quadratic")
                      for s in SOLVERS]
            if steps <= 10:
                cells += [dict(impl="ddim", solver=s, steps=steps, seed=seed, grid="logsnr")
                          for s in SOLVERS]
    return cells


class Lab:
    """The model, its classifier's reference features and the samplers."""

    def __init__(self, model: str, n: int, batch_size: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.model = ddim.load_pretrained(model)
        self.features, reference = classifier_and_reference(model)
        self.ref = extract_features(reference, self.features)
        # a class-conditional bundle (its last class is the null class) samples n/K of each of
        # its K real classes, sample i getting label i·K // n
        self.classes = getattr(self.model.model.config, "num_class_embeds", None)

    def labels(self, lo: int, hi: int) -> dict:
        if not self.classes:
            return {}
        return dict(class_labels=torch.arange(lo, hi) * (self.classes - 1) // self.n)

    def run(self, cell: dict) -> dict:
        start = time.perf_counter()
        x = torch.cat([self._batch(cell, lo, min(lo + self.batch_size, self.n))
                       for lo in range(0, self.n, self.batch_size)])
        seconds = time.perf_counter() - start
        lo, hi = self.model.data_range
        fd = fd_from_features(extract_features(x.clamp(lo, hi), self.features), self.ref)
        return dict(fd=fd, seconds=seconds, n=self.n)

    def _batch(self, cell: dict, lo: int, hi: int) -> torch.Tensor:
        gens = sample_generators(cell["seed"], lo, hi)
        x_T = ddim.sampling.noise.randn((hi - lo, *self.model.sample_shape), gens,
        torch.device("cpu"),
                               torch.float32)  # as ddim.sample draws it from these generators
        if cell["impl"] == "diffusers":
            return diffusers_sample(self.model, cell["solver"], cell["steps"], x_T,
                                    torch.Generator().manual_seed(cell["seed"] * 1_000_003 + lo),
                                    **self.labels(lo, hi))
        grid = (dict(timesteps=logsnr_grid(self.model.schedule, cell["steps"]))
                if cell["grid"] == "logsnr" else dict(steps=cell["steps"], spacing=cell["grid"]))
        return ddim.sample(self.model, solver=cell["solver"], x_T=x_T, generator=gens, **grid,
                           **self.labels(lo, hi))


def diffusers_sample(bundle, solver: str, steps: int, x_T: torch.Tensor,
                     generator: torch.Generator, class_labels: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """diffusers' scheduler for ``solver`` on the trailing grid, in a hand loop."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                  beta_schedule="linear", timestep_spacing="trailing")
    if solver == "ddim":
        sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    elif solver == "unipc":
        sched = UniPCMultistepScheduler(predict_x0=True, solver_type="bh2", solver_order=2,
                                        lower_order_final=True, final_sigmas_type="zero",
                                        **common)
    else:
        sched = DPMSolverMultistepScheduler(
            algorithm_type="sde-dpmsolver++" if solver == "dpmpp_2m_sde" else "dpmsolver++",
            solver_order=3 if solver == "dpmpp_3m" else 2, lower_order_final=True,
            final_sigmas_type="zero", **common)
    sched.set_timesteps(steps)
    labels = class_labels
    x = x_T.clone()
    with torch.inference_mode():
        for t in sched.timesteps:
            out = bundle.model(x, t, class_labels=labels).sample
            kw = dict(eta=0.0) if solver == "ddim" else {}
            if solver in ("ddim", "dpmpp_2m_sde"):
                kw["generator"] = generator
            x = sched.step(out, t, x, **kw).prev_sample
    return x


def classifier_and_reference(model: str):
    """(feature extractor, reference images) for FD on ``model``'s data: the shipped
    classifier and real images of its kit (``ddim.evaluation.kits.reference_images``)."""
    from ddim.evaluation.classifiers import load_classifier
    from ddim.evaluation.kits import reference_images

    return load_classifier(model).features, reference_images(model)


def render(done: dict, model: str, n: int) -> str:
    """The table: FD (mean ± std over seeds where run) per solver and budget."""
    lines = [f"FD against model calls on `{model}` (n = {n}, η = 0 / deterministic unless the "
             "solver is an SDE; ± is the std over seeds 0-2 where run; '…' not run yet):", "",
             "| solver | grid | " + " | ".join(str(s) for s in BUDGETS) + " |",
             "|---|---" + "|---:" * len(BUDGETS) + "|"]
    for impl in ("ddim", "diffusers"):
        for solver in SOLVERS:
            for grid in GRIDS:
                if grid == "logsnr" and impl == "diffusers":
                    continue
                cells = [_fds(done, impl, solver, s, grid, n) for s in BUDGETS]
                if not any(cells):
                    continue
                name = f"{solver}" if impl == "ddim" else f"diffusers {solver}"
                lines.append(f"| {name} | {grid} | " + " | ".join(_fmt(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def _fds(done: dict, impl: str, solver: str, steps: int, grid: str, n: int) -> list[float]:
    return [c["fd"] for seed in (0, 1, 2) if (c := done.get(key(dict(
        impl=impl, solver=solver, steps=steps, seed=seed, grid=grid, n=n))))]


def _fmt(values: list[float]) -> str:
    if not values:
        return "…"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.2f} ± {std:.2f}"


def plot(done: dict, model: str, n: int, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'ddim[bench]')", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, solver in enumerate(SOLVERS):
        for impl, grid, style in (("ddim", "trailing", "-o"), ("diffusers", "trailing", ":x"),
                                  ("ddim", "time_quadratic", "--s")):
            pts = [(s, sum(v) / len(v)) for s in BUDGETS
                   if (v := _fds(done, impl, solver, s, grid, n))]
            if pts:
                label = (solver if impl == "ddim" else f"diffusers {solver}") + f", {grid}"
                ax.plot(*zip(*pts, strict=True), style, label=label, markersize=4,
                        color=f"C{k}")
    ax.set(xscale="log", yscale="log", xlabel="model calls", ylabel="FD (lower is better)",
           title=f"FD against model calls, {model}")
    ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FD against model calls for every solver")
    p.add_argument("--model", default="digits", choices=["digits", "mnist"])
    p.add_argument("--n", type=int, default=1000, help="samples per cell")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only rebuild the report")
    p.add_argument("--budgets", type=int, nargs="+", default=BUDGETS,
                   help="only these model-call budgets (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="only these seeds (default: 0 1 2, seeds 1-2 only up to 10 calls)")
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS),
                   help="only these solvers")
    p.add_argument("--impls", nargs="+", default=["ddim", "diffusers"],
                   choices=["ddim", "diffusers"], help="only these implementations")
    p.add_argument("--grids", nargs="+", default=["trailing", "time_quadratic", "logsnr"],
                   choices=["trailing", "time_quadratic", "logsnr"], help="only these grids")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop starting new cells after this long (resume later)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = RESULTS / f"solvers_{args.model}_cells.json"
    done = load_cells(path)
    if not args.report:
        lab, start = Lab(args.model, args.n, args.batch_size), time.perf_counter()
        cells = [dict(c, n=args.n) for c in plan() if c["steps"] in args.budgets
                 and c["seed"] in args.seeds and c["impl"] in args.impls
                 and c["solver"] in args.solvers
                 and c["grid"] in args.grids]
        for cell in [c for c in cells if key(c) not in done]:
            if args.max_minutes and time.perf_counter() - start > 60 * args.max_minutes:
                print("time limit reached; rerun to resume", file=sys.stderr)
                break
            result = lab.run(cell)
            done = save_cells(path, {key(cell): dict(cell, **result, threads=args.threads)})
            print(f"{key(cell)}: FD {result['fd']:.3f} in {result['seconds']:.1f} s",
                  file=sys.stderr, flush=True)
    report = render(done, args.model, args.n)
    atomic_write_text(RESULTS / f"solvers_{args.model}.md", report)
    plot(done, args.model, args.n, RESULTS / f"solvers_{args.model}.png")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
