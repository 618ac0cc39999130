"""Sample quality against model calls for every solver and grid, calibrated grids included,
ours and diffusers' side by side.

    python benchmarks/solvers.py                              # digits: run (or resume), report
    python benchmarks/solvers.py --report                     # only rebuild the table and plot
    python benchmarks/solvers.py --model mnist --solvers ipndm unipc --grids karras calibrated
    python benchmarks/solvers.py --model benchmarks/models/digits-heldout   # any model folder

For each model-call budget S, n samples (default 1000) are drawn from the same x_T (seed rule
of ``ddim generate``: sample i of seed s uses ``ddim.sampling.noise.sample_generators(s, i,
i + 1)``) by

- ddim's solvers (the registry: ddim with η = 0, dpmpp_2m, dpmpp_3m, dpmpp_3m_true, unipc,
  ipndm, ipndm_v, dpmpp_2m_sde) through ``ddim.sample(model, S, solver=..., spacing=...)`` on
  each grid: the presets trailing (the default), time_quadratic, karras, kl_optimal, log_snr,
  and ``calibrated``: the grid :func:`ddim.calibrate_timesteps` fitted to this model, solver and
  S (64 calibration noises of their own seed stream, never the samples' noise; teacher
  dpmpp_3m_true, 100 steps), found in (or fitted into) the model's calibration file;
- diffusers' schedulers on the trailing grid: ``DDIMScheduler`` (η = 0),
  ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2 and 3; sde-dpmsolver++),
  ``UniPCMultistepScheduler`` (bh2, order 2), each with ``lower_order_final=True`` and a final
  step onto ᾱ = 1, driven by a hand loop (their noise from a seeded CPU generator); the table's
  "diffusers best" row is the best of them at each budget.

FD is measured in the features of the classifier of the model's images (8×8: the bundled
digits classifier against all 1797 real digits; 28×28: the MNIST classifier against the 1000
held-out digits). A class-conditional model samples n/K of each class (sample i has label
i·K // n), no guidance. Budgets up to 10 calls run 3 seeds (0, 1, 2); the others seed 0.
Each finished cell is saved at once to results/solvers_<model>_cells.json, so an interrupted
run resumes; --shard I/N shares the cells between processes. The file records the weights'
sha256 and refuses the cells of other weights; a calibrated cell whose grid was refitted since
is run again.

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
from ddim.evaluation.classifiers import load_classifier
from ddim.evaluation.frechet import extract_features, fd_from_features
from ddim.evaluation.kits import default_kit, reference_images
from ddim.loading.calibrations import CalibrationError
from ddim.loading.identity import weights_identity
from ddim.sampling.noise import randn, sample_generators
from ddim.sampling.solvers import SOLVERS as REGISTRY

sys.path.insert(0, str(Path(__file__).parent))
from cells import key, load_cells, save_cells, shard_arg  # noqa: E402  (benchmarks/cells.py)

RESULTS = Path(__file__).parent / "results"
BUDGETS = [3, 4, 5, 6, 8, 10, 15, 20, 50]
FEW = [4, 5, 6, 8, 10]  # the budgets of the presets in σ and of the calibrated grids
SEEDED = 10  # budgets up to this many calls run 3 seeds
SOLVERS = list(REGISTRY)
DIFFUSERS = ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde"]  # with a counterpart
GRIDS = ["trailing", "time_quadratic", "karras", "kl_optimal", "log_snr", "calibrated"]


def plan() -> list[dict]:
    """Every cell, cheapest first within a seed; seed 0 first everywhere."""
    cells = []
    for seed in (0, 1, 2):
        for steps in BUDGETS:
            if seed and steps > SEEDED:
                continue
            for solver in SOLVERS:
                for grid in GRIDS:
                    if grid in ("trailing", "time_quadratic") or steps in FEW:
                        if grid == "calibrated" and REGISTRY[solver].stochastic:
                            continue
                        cells.append(dict(impl="ddim", solver=solver, steps=steps, seed=seed,
                                          grid=grid))
                if solver in DIFFUSERS:
                    cells.append(dict(impl="diffusers", solver=solver, steps=steps, seed=seed,
                                      grid="trailing"))
    return cells


class Lab:
    """The model, its classifier's reference features, its calibrated grids, the samplers."""

    def __init__(self, model: str, n: int, batch_size: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.model = ddim.load_pretrained(model)
        kit = default_kit(self.model.sample_shape)
        self.features = load_classifier(kit).features
        self.ref = extract_features(reference_images(kit), self.features)
        # a class-conditional bundle (its last class is the null class) samples n/K of each of
        # its K real classes, sample i getting label i·K // n
        self.classes = getattr(self.model.model.config, "num_class_embeds", None)

    def labels(self, lo: int, hi: int) -> dict:
        if not self.classes:
            return {}
        return dict(class_labels=torch.arange(lo, hi) * (self.classes - 1) // self.n)

    def calibrated(self, solver: str, steps: int) -> tuple[list[int], dict]:
        """The calibrated grid for (solver, steps): from the model's file, else fitted now
        and saved there; with what fitting it cost."""
        try:
            return self.model.calibrated_timesteps(solver, steps), {}
        except CalibrationError:
            labels = self.labels(0, 64) if self.classes else {}
            if labels:  # 64 calibration noises, balanced classes
                labels = dict(class_labels=torch.arange(64) % (self.classes - 1))
            result = ddim.calibrate_timesteps(self.model, steps, solver=solver, **labels)
            result.save(result.default_path)  # a bundled model's file too: a developer tool
            print(f"calibrated {solver} S={steps}: {list(result.timesteps)} in "
                  f"{result.seconds:.0f} s ({result.model_calls} calls)", file=sys.stderr)
            return list(result.timesteps), dict(calibration_seconds=result.seconds,
                                                calibration_calls=result.model_calls)

    def done(self, cell: dict, cells: dict) -> bool:
        """Whether ``cells`` holds ``cell``; a calibrated cell only with the grid the model's
        calibration file holds now (a refitted grid makes the old cell stale)."""
        if key(cell) not in cells:
            return False
        if cell["grid"] != "calibrated":
            return True
        try:
            grid = self.model.calibrated_timesteps(cell["solver"], cell["steps"])
        except CalibrationError:
            return False
        return cells[key(cell)].get("timesteps") == list(grid)

    def run(self, cell: dict) -> dict:
        extra = {}
        grid = dict(steps=cell["steps"], spacing=cell["grid"])
        if cell["grid"] == "calibrated":
            timesteps, extra = self.calibrated(cell["solver"], cell["steps"])
            grid, extra = dict(timesteps=timesteps), dict(extra, timesteps=timesteps)
        start = time.perf_counter()
        x = torch.cat([self._batch(cell, grid, lo, min(lo + self.batch_size, self.n))
                       for lo in range(0, self.n, self.batch_size)])
        seconds = time.perf_counter() - start
        lo, hi = self.model.data_range
        fd = fd_from_features(extract_features(x.clamp(lo, hi), self.features), self.ref)
        return dict(fd=fd, seconds=seconds, n=self.n, **extra)

    def _batch(self, cell: dict, grid: dict, lo: int, hi: int) -> torch.Tensor:
        gens = sample_generators(cell["seed"], lo, hi)
        x_T = randn((hi - lo, *self.model.sample_shape), gens, torch.device("cpu"),
                    torch.float32)  # as ddim.sample draws it from these generators
        if cell["impl"] == "diffusers":
            return diffusers_sample(self.model, cell["solver"], cell["steps"], x_T,
                                    torch.Generator().manual_seed(cell["seed"] * 1_000_003 + lo),
                                    **self.labels(lo, hi))
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
    x = x_T.clone()
    with torch.inference_mode():
        for t in sched.timesteps:
            out = bundle.model(x, t, class_labels=class_labels).sample
            kw = dict(eta=0.0) if solver == "ddim" else {}
            if solver in ("ddim", "dpmpp_2m_sde"):
                kw["generator"] = generator
            x = sched.step(out, t, x, **kw).prev_sample
    return x


def render(done: dict, label: str, n: int) -> str:
    """The table: FD (mean ± std over seeds where run) per solver, grid and budget, then the
    best of diffusers' schedulers at each budget."""
    lines = [f"FD against model calls on `{label}` (n = {n}, η = 0 / deterministic unless the "
             "solver is an SDE; ± is the std over seeds 0-2 where run; '…' not run):", "",
             "| solver | grid | " + " | ".join(str(s) for s in BUDGETS) + " |",
             "|---|---" + "|---:" * len(BUDGETS) + "|"]
    for solver in SOLVERS:
        for grid in GRIDS:
            cells = [_fds(done, "ddim", solver, s, grid, n) for s in BUDGETS]
            if any(cells):
                lines.append(f"| {solver} | {grid} | " + " | ".join(_fmt(v) for v in cells)
                             + " |")
    for solver in DIFFUSERS:
        cells = [_fds(done, "diffusers", solver, s, "trailing", n) for s in BUDGETS]
        if any(cells):
            lines.append(f"| diffusers {solver} | trailing | "
                         + " | ".join(_fmt(v) for v in cells) + " |")
    best = []
    for s in BUDGETS:
        runs = {solver: v for solver in DIFFUSERS
                if (v := _fds(done, "diffusers", solver, s, "trailing", n))}
        if runs:
            name = min(runs, key=lambda k: sum(runs[k]) / len(runs[k]))
            best.append(f"{_fmt(runs[name])} ({name})")
        else:
            best.append("…")
    lines.append("| diffusers best | trailing | " + " | ".join(best) + " |")
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


def plot(done: dict, label: str, n: int, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'ddim[bench]')", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {"trailing": "-o", "time_quadratic": "--s", "karras": "-.^", "calibrated": "-D"}
    for k, solver in enumerate(SOLVERS):
        for grid, style in styles.items():
            pts = [(s, sum(v) / len(v)) for s in BUDGETS
                   if (v := _fds(done, "ddim", solver, s, grid, n))]
            if len(pts) > 1:
                ax.plot(*zip(*pts, strict=True), style, label=f"{solver}, {grid}",
                        markersize=3, color=f"C{k}", linewidth=1)
    ax.set(xscale="log", yscale="log", xlabel="model calls", ylabel="FD (lower is better)",
           title=f"FD against model calls, {label}")
    ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FD against model calls for every solver")
    p.add_argument("--model", default="digits",
                   help="a bundled model or a model folder (default: %(default)s)")
    p.add_argument("--n", type=int, default=1000, help="samples per cell")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only rebuild the report")
    p.add_argument("--budgets", type=int, nargs="+", default=BUDGETS,
                   help="only these model-call budgets (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="only these seeds (default: 0 1 2, seeds 1-2 only up to 10 calls)")
    p.add_argument("--solvers", nargs="+", default=SOLVERS, choices=SOLVERS,
                   help="only these solvers")
    p.add_argument("--impls", nargs="+", default=["ddim", "diffusers"],
                   choices=["ddim", "diffusers"], help="only these implementations")
    p.add_argument("--grids", nargs="+", default=GRIDS, choices=GRIDS,
                   help="only these grids")
    p.add_argument("--shard", type=shard_arg, default=(0, 1), metavar="I/N",
                   help="run only every N-th cell from the I-th (several processes)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop starting new cells after this long (resume later)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    label = Path(args.model).name
    path = RESULTS / f"solvers_{label}_cells.json"
    done = load_cells(path)
    if not args.report:
        lab, start = Lab(args.model, args.n, args.batch_size), time.perf_counter()
        weights = weights_identity(lab.model.model)
        if done.get("weights", weights) != weights:
            raise SystemExit(f"{path} holds cells of other weights ({done['weights']}, not "
                             f"{weights}); move it away")
        done = save_cells(path, {"weights": weights})
        cells = [dict(c, n=args.n) for c in plan() if c["steps"] in args.budgets
                 and c["seed"] in args.seeds and c["impl"] in args.impls
                 and c["solver"] in args.solvers and c["grid"] in args.grids]
        shard, shards = args.shard
        for cell in [c for c in cells if not lab.done(c, done)][shard::shards]:
            if args.max_minutes and time.perf_counter() - start > 60 * args.max_minutes:
                print("time limit reached; rerun to resume", file=sys.stderr)
                break
            if lab.done(cell, load_cells(path)):  # another shard did it meanwhile
                continue
            result = lab.run(cell)
            done = save_cells(path, {key(cell): dict(cell, **result, threads=args.threads)})
            print(f"{key(cell)}: FD {result['fd']:.3f} in {result['seconds']:.1f} s",
                  file=sys.stderr, flush=True)
    report = render(done, label, args.n)
    atomic_write_text(RESULTS / f"solvers_{label}.md", report)
    plot(done, label, args.n, RESULTS / f"solvers_{label}.png")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
