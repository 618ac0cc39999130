"""Reproduce the DDIM paper's claims on the bundled digits model.

    python benchmarks/paper.py                 # run (or resume) every cell, then report
    python benchmarks/paper.py --report        # only rebuild the tables and plot
    python benchmarks/paper.py --speed         # only re-measure images/s, side by side
    python benchmarks/paper.py --shard 0/2 &   # two processes share the remaining cells
    python benchmarks/paper.py --shard 1/2

Cells (each saved to benchmarks/results/paper_cells.json as soon as it finishes, so an
interrupted run resumes where it stopped and loses no finished cell):

- fd:          Table 1 analogue: FD (digits-classifier features, reference: all 1797 real
               digits) of n samples for S in {10, 20, 50, 100, 1000} x η in {0, 0.2, 0.5, 1,
               σ̂}, with 3 seeds at every S below 1000. DDPM ancestral sampling at 1000 steps
               is the S=1000, η=1 cell (η=1 with S=T is exactly DDPM; σ̂ at S=1000 is DDPM with its
               larger variance β_t).
- inversion:   encode the 300 held-out digits with S steps, decode with the same S (η=0):
               per-dimension MSE for S in {10, 20, 50, 100, 200}.
- consistency: for fixed x_T, per-dimension MSE between the S-step and the 1000-step η=0
               samples, S in {10, 20, 50, 100} (the paper's figure 3 claim).
- speed:       images/s of DDIM (η=0) at each S and of DDPM-1000, measured by --speed in
               interleaved rounds within one process (the fd cells' wall times are kept too,
               but they come from runs hours apart on a shared machine).

Several processes may run at once (--shard I/N): each takes every N-th remaining cell and
merges its result into paper_cells.json under a file lock, so none overwrites another's.

Seed rule (--rule): ``sample_seed`` (the default) draws sample i of seed s from
``ddim.sampling.noise.sample_generators``, as ``ddim generate``/``sample``/``eval`` do. ``legacy``
is the rule the published table was measured with (one CPU generator per sample seeded with
s·1000003 + i); its cells carry no ``rule`` field. Each rule's cells are kept and reported
separately. On this model the legacy rule's x_T sets give a lower and steadier FD than
independent noise does (S = 20, η = 0, 6 seeds: 2.26 ± 0.17 against 2.79 ± 1.12 for
sample_seed, 2.75 ± 0.65 for one generator and 3.01 ± 0.47 for numpy), so compare legacy cells
with each other, not with other runs.

Outputs: benchmarks/results/paper.md (tables) and paper.png (FD against S, a line per η) for
the legacy rule; paper_sample_seed.md and .png for the default rule.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import ddim
from ddim.atomic import atomic_write, atomic_write_text
from ddim.evaluation.classifiers import load_digits_classifier
from ddim.evaluation.digits import digits_split, load_digits_images
from ddim.evaluation.frechet import extract_features, fd_from_features
from ddim.sampling.noise import sample_generators

sys.path.insert(0, str(Path(__file__).parent))
from cells import key, load_cells, save_cells, shard_arg  # noqa: E402  (benchmarks/cells.py)

RESULTS = Path(__file__).parent / "results"
ETAS = ["0", "0.2", "0.5", "1", "hat"]
STEPS = [10, 20, 50, 100, 1000]
PAPER_CIFAR10 = {  # Song et al. 2021, Table 1 (CIFAR10 FID) and Table 2 (inversion MSE)
    "0": [13.36, 6.84, 4.67, 4.16, 4.04], "1": [41.07, 18.36, 8.01, 5.78, 4.73],
    "hat": [367.43, 133.37, 32.72, 9.99, 3.17],
}
PAPER_INVERSION = {10: 0.014, 20: 0.0065, 50: 0.0023, 100: 0.0009}

SPACING = "leading"  # the paper's uniform grid i·T/S (section 4.2)


RULES = ("sample_seed", "legacy")  # see the module docstring


def generators(rule: str, seed: int, lo: int, hi: int) -> list[torch.Generator]:
    """One CPU generator per sample lo..hi-1 of seed ``seed`` under ``rule`` (RULES)."""
    if rule == "legacy":  # the rule of the published table
        return [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(lo, hi)]
    return sample_generators(seed, lo, hi)  # ddim generate's seed rule


def tagged(cell: dict, rule: str) -> dict:
    """The cell as stored for ``rule``: legacy cells, and cells whose result draws no noise
    (inversion, speed), carry no rule field."""
    if rule == "legacy" or cell["kind"] not in ("fd", "consistency"):
        return dict(cell)
    return dict(cell, rule=rule)


def stem(rule: str) -> str:
    """The report's file stem: ``paper`` for the published (legacy) table."""
    return "paper" if rule == "legacy" else f"paper_{rule}"


def plan(n: int, rule: str = "sample_seed") -> list[dict]:
    """Every cell, most informative first (the 1000-step cells are the expensive ones)."""
    return [tagged(cell, rule) for cell in _cells(n)]


def _cells(n: int) -> list[dict]:
    cells = []
    for steps in STEPS[:-1]:
        cells += [dict(kind="fd", steps=steps, eta=e, seed=0, n=n) for e in ETAS]
    for seed in (1, 2):
        for steps in (10, 20):
            cells += [dict(kind="fd", steps=steps, eta=e, seed=seed, n=n) for e in ("0", "1")]
    cells += [dict(kind="inversion", steps=s) for s in (10, 20, 50, 100, 200)]
    cells += [dict(kind="consistency", steps=s, n=200) for s in (10, 20, 50, 100)]
    cells += [dict(kind="fd", steps=1000, eta=e, seed=0, n=n) for e in ("1", "0", "hat",
                                                                         "0.5", "0.2")]
    for seed in (1, 2):
        for steps in (10, 20):
            cells += [dict(kind="fd", steps=steps, eta=e, seed=seed, n=n)
                      for e in ("0.2", "0.5", "hat")]
    for seed in (1, 2):  # the seed spread everywhere below S=1000
        for steps in (50, 100):
            cells += [dict(kind="fd", steps=steps, eta=e, seed=seed, n=n) for e in ETAS]
    return cells


class Lab:
    """The model, the features of the real digits and a batched sampler."""

    def __init__(self, batch_size: int, out: Path, rule: str) -> None:
        self.out, self.rule = out, rule
        self.model = ddim.load_pretrained("digits")
        self.clf = load_digits_classifier()
        real, _ = load_digits_images()
        self.ref = extract_features(real, self.clf.features)
        self.batch_size = batch_size
        self.heldout = digits_split()[2]

    def generate(self, n: int, steps: int, eta: str, seed: int, progress: bool) -> torch.Tensor:
        out = []
        for lo in range(0, n, self.batch_size):
            hi = min(n, lo + self.batch_size)
            gens = generators(self.rule, seed, lo, hi)
            kw = dict(sigma_hat=True) if eta == "hat" else dict(eta=float(eta))
            out.append(ddim.sample(self.model, steps, batch_size=hi - lo, generator=gens,
                                   progress=progress, spacing=SPACING, **kw))
        return torch.cat(out)

    def run(self, cell: dict, progress: bool) -> dict:
        start = time.perf_counter()
        if cell["kind"] == "fd":
            x = self.generate(cell["n"], cell["steps"], cell["eta"], cell["seed"], progress)
            seconds = time.perf_counter() - start
            fd = fd_from_features(extract_features(x.clamp(-1, 1), self.clf.features), self.ref)
            return dict(fd=fd, seconds=seconds, images_per_second=cell["n"] / seconds)
        if cell["kind"] == "inversion":
            x0 = self.heldout
            x_T = ddim.invert(self.model, x0, cell["steps"], progress=progress, spacing=SPACING)
            back = ddim.sample(self.model, cell["steps"], x_T=x_T, progress=progress,
                               spacing=SPACING)
            return dict(mse=(back - x0).square().mean().item(), n=len(x0),
                        seconds=time.perf_counter() - start)
        if cell["kind"] == "consistency":
            if self.rule == "legacy":
                x_T = torch.randn(cell["n"], 1, 8, 8, generator=torch.Generator().manual_seed(0))
            else:
                x_T = ddim.sampling.noise.randn((cell["n"], 1, 8, 8), generators(self.rule, 0, 0,
                                       cell["n"]), torch.device("cpu"), torch.float32)
            ref = self._reference_1000(x_T, progress)
            x = ddim.sample(self.model, cell["steps"], x_T=x_T, progress=progress,
                            spacing=SPACING)
            return dict(mse=(x - ref).square().mean().item(), seconds=time.perf_counter() - start)
        raise ValueError(f"unknown cell kind {cell['kind']!r}")

    def _reference_1000(self, x_T: torch.Tensor, progress: bool) -> torch.Tensor:
        path = self.out / "paper_consistency_ref.pt"
        if path.exists():
            saved = torch.load(path)
            if torch.equal(saved["x_T"], x_T):
                return saved["x0"]
        x0 = ddim.sample(self.model, 1000, x_T=x_T, progress=progress, spacing=SPACING)
        atomic_write(path, lambda f: torch.save({"x_T": x_T, "x0": x0}, f))
        return x0


def measure_speed(lab: Lab, threads: int, n: int = 100, rounds: int = 3) -> dict:
    """images/s of DDIM at each S (η=0) and DDPM (S=1000, η=1), batch n, interleaved rounds:
    the FD cells' wall times come from runs hours apart on a shared machine, these do not."""
    times: dict[int, list[float]] = {s: [] for s in STEPS}
    for _ in range(rounds):
        for s in STEPS:
            start = time.perf_counter()
            lab.generate(n, s, "0" if s < 1000 else "1", 0, False)
            times[s].append(time.perf_counter() - start)
    out = {}
    for s, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        cell = dict(kind="speed", steps=s, n=n)
        out[key(cell)] = dict(cell, seconds=med, images_per_second=n / med, rounds=rounds,
                              threads=threads)
    return out


def load(out: Path) -> dict:
    return load_cells(out / "paper_cells.json")


def save(out: Path, new: dict) -> dict:
    """Merge `new` into paper_cells.json (atomically, under a lock); return the merged dict."""
    return save_cells(out / "paper_cells.json", new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Reproduce the DDIM paper on the digits model")
    p.add_argument("--n", type=int, default=1000, help="samples per FD cell")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--report", action="store_true", help="only rebuild the report")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop starting new cells after this long (resume later)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--speed", action="store_true",
                   help="only (re)measure speed: images/s of each S side by side, interleaved")
    p.add_argument("--rule", choices=RULES, default="sample_seed",
                   help="seed rule of the FD and consistency cells (see the docstring)")
    p.add_argument("--shard", type=shard_arg, default=(0, 1), metavar="I/N",
                   help="run only every N-th remaining cell, starting at the I-th (default 0/1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    done = load(args.out)
    if args.speed:
        done = save(args.out, measure_speed(Lab(args.batch_size, args.out, args.rule),
                                            args.threads))
    elif not args.report:
        lab, start = Lab(args.batch_size, args.out, args.rule), time.perf_counter()
        index, count = args.shard
        todo = [cell for cell in plan(args.n, args.rule) if key(cell) not in done][index::count]
        for cell in todo:
            k = key(cell)
            if args.max_minutes and time.perf_counter() - start > 60 * args.max_minutes:
                print("time limit reached; rerun to resume", file=sys.stderr)
                break
            result = lab.run(cell, args.progress)
            done = save(args.out, {k: dict(cell, **result, threads=args.threads,
                                                 batch_size=args.batch_size)})
            print(f"{k}: {result}", file=sys.stderr, flush=True)
    report = render(done, args.n, args.rule)
    atomic_write_text(args.out / f"{stem(args.rule)}.md", report)
    plot(done, args.n, args.out, args.rule)
    print(report)
    return 0


def _get(done: dict, rule: str, **cell) -> dict | None:
    return done.get(key(tagged(cell, rule)))


def _fd_seeds(done: dict, steps: int, eta: str, n: int, rule: str) -> list[float]:
    """The FDs of the finished seeds (0, 1, 2) of one (S, η) cell."""
    return [c["fd"] for seed in (0, 1, 2)
            if (c := _get(done, rule, kind="fd", steps=steps, eta=eta, seed=seed, n=n))]


def _mean_std(vals: list[float]) -> tuple[float, float]:
    t = torch.tensor(vals, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(vals) > 1 else 0.0)


def render(done: dict, n: int, rule: str = "sample_seed") -> str:
    """Markdown tables from the finished cells (missing cells shown as '…')."""
    eta_label = {"0": "η = 0", "0.2": "η = 0.2", "0.5": "η = 0.5", "1": "η = 1", "hat": "σ̂"}
    lines = [f"FD on the bundled digits model (n = {n} samples per cell, features of the "
             "digits classifier, reference all 1797 real digits; lower is better). "
             f"± is the standard deviation over seeds 0, 1, 2 where run. Seed rule: {rule}.",
             "",
             "| | " + " | ".join(f"S = {s}" for s in STEPS) + " |",
             "|---" * (len(STEPS) + 1) + "|"]
    for eta in ETAS:
        row = []
        for s in STEPS:
            vals = _fd_seeds(done, s, eta, n, rule)
            if not vals:
                row.append("…")
            elif len(vals) == 1:
                row.append(f"{vals[0]:.2f}")
            else:
                mean, std = _mean_std(vals)
                row.append(f"{mean:.2f} ± {std:.2f} ({len(vals)} seeds)")
        lines.append(f"| {eta_label[eta]} | " + " | ".join(row) + " |")
    lines += ["", "The paper's CIFAR10 FID for comparison (its Table 1):", "",
              "| | " + " | ".join(f"S = {s}" for s in STEPS) + " |",
              "|---" * (len(STEPS) + 1) + "|"]
    for eta, vals in PAPER_CIFAR10.items():
        lines.append(f"| {eta_label[eta]} | " + " | ".join(map(str, vals)) + " |")
    speed = {s: done.get(key(dict(kind="speed", steps=s, n=100))) for s in STEPS}
    lines += ["", "Speed and quality: images/s measured side by side (`--speed`: 100 images per "
              "batch, median of 3 interleaved rounds); FD as in the table above (the mean over the "
              "seeds run); DDPM = "
              "η = 1 with S = 1000:", "", "| sampler | images/s | time per image (ms) | FD | "
              "time vs DDPM |", "|---|---|---|---|---|"]
    for s in STEPS:
        vals, v = _fd_seeds(done, s, "0" if s < 1000 else "1", n, rule), speed[s]
        if v is None:
            continue
        name = f"DDIM S = {s}, η = 0" if s < 1000 else "DDPM, 1000 steps"
        rel = f"1/{speed[1000]['seconds'] / v['seconds']:.1f}" if speed[1000] else "…"
        fd = f"{_mean_std(vals)[0]:.2f}" if vals else "…"
        lines.append(f"| {name} | {v['images_per_second']:.1f} | "
                     f"{1000 * v['seconds'] / v['n']:.2f} | {fd} | {rel} |")
    lines += ["", "Reconstruction of the 300 held-out digits (encode with S steps, decode with "
              "the same S, η = 0; per-dimension MSE, data in [-1, 1]):", "",
              "| S | MSE | paper (CIFAR10) |", "|---|---|---|"]
    for s in (10, 20, 50, 100, 200):
        c = done.get(key(dict(kind="inversion", steps=s)))
        lines.append(f"| {s} | {c['mse']:.5f} | {PAPER_INVERSION.get(s, '')} |" if c
                     else f"| {s} | … | {PAPER_INVERSION.get(s, '')} |")
    lines += ["", "Consistency: per-dimension MSE between the S-step and the 1000-step η = 0 "
              "sample from the same x_T (200 latents):", "", "| S | MSE to S = 1000 |",
              "|---|---|"]
    for s in (10, 20, 50, 100):
        c = _get(done, rule, kind="consistency", steps=s, n=200)
        lines.append(f"| {s} | {c['mse']:.5f} |" if c else f"| {s} | … |")
    return "\n".join(lines) + "\n"


def plot(done: dict, n: int, out: Path, rule: str = "sample_seed") -> None:
    """FD against S on log axes, one line per η (only finished cells): the mean over the
    seeds run, with ± one standard deviation as error bars where there are several."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for eta in ETAS:
        pts = [(s, *_mean_std(v)) for s in STEPS if (v := _fd_seeds(done, s, eta, n, rule))]
        if pts:
            xs, ys, errs = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3,
                        label="σ̂" if eta == "hat" else f"η={eta}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sampling steps S")
    ax.set_ylabel(f"FD (n={n}, digits-classifier features)")
    ax.set_title("DDIM on the bundled digits model")
    ax.legend()
    fig.tight_layout()
    atomic_write(out / f"{stem(rule)}.png", lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
