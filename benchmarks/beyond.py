"""Beyond the paper, on the bundled digits models: near-exact inversion, classifier-free
guidance and inpainting.

    python benchmarks/beyond.py [--only inversion guidance inpainting] [--n 1000]

- inversion: encode the 300 held-out digits with S steps and decode them with the same grid;
  per-dimension MSE against model calls per step, for plain DDIM inversion (1 call) and for
  implicit inversion by plain fixed-point iteration and by Anderson mixing (depth 2), with
  1 + k calls (k = 1, 2, 4, 9; tol = 0 so that every call is spent), S in {10, 20, 50}.
- guidance (`digits-cond`): n samples, n/10 per class, S = 50, η = 0, w in {0, 1, 2, 4}: the
  digits classifier's accuracy on the requested class, and FD to all 1797 real digits.
- inpainting (`digits`): the held-out digits with their right half unknown, S = 50: the
  classifier's accuracy on the completions and the largest change of a known pixel.

Writes benchmarks/results/beyond.md (and .json) atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import ddim
from ddim.atomic import atomic_write_text
from ddim.evaluation.classifiers import load_digits_classifier
from ddim.evaluation.digits import digits_split
from ddim.evaluation.kits import evaluate
from ddim.sampling.noise import sample_generators

RESULTS = Path(__file__).parent / "results"


def inversion(rows: dict) -> list[str]:
    model = ddim.load_pretrained("digits")
    x0 = digits_split()[2]
    out = ["Reconstruction of the 300 held-out digits (per-dimension MSE, data in [-1, 1]) "
           "against model calls per step:", "",
           "| S | method | calls / step | MSE | vs plain |", "|---|---|---|---|---|"]
    for steps in (10, 20, 50):
        plain = _mse(model, x0, steps)
        rows[f"inversion|{steps}|ddim|1"] = plain
        out.append(f"| {steps} | plain DDIM inversion | 1 | {plain:.2e} | 1× |")
        for label, depth in (("fixed point", 0), ("fixed point + Anderson(2)", 2)):
            for k in (1, 2, 4, 9):
                mse = _mse(model, x0, steps, method="fixed_point", max_iters=k, anderson=depth,
                           tol=0.0)
                rows[f"inversion|{steps}|{label}|{1 + k}"] = mse
                out.append(f"| {steps} | {label} | {1 + k} | {mse:.2e} | {plain / mse:.1f}× "
                           "lower |")
                print(out[-1], file=sys.stderr, flush=True)
    return out


def inversion_solvers(rows: dict) -> list[str]:
    """Inversion with each solver that inverts (ddim.invert(solver=...)), decoded with the
    same solver and grid (the default trailing spacing), against plain DDIM inversion and
    DDIM's implicit inversion (fixed point + Anderson(2), up to 5 extra calls per step)."""
    from ddim.sampling.solvers import SOLVERS

    model = ddim.load_pretrained("digits")
    x0 = digits_split()[2]
    solvers = [n for n, e in SOLVERS.items() if e.not_invertible is None]
    out = ["Round trip of the 300 held-out digits through ddim.invert(solver=...) and "
           "ddim.sample(solver=...) on the same trailing grid (per-dimension MSE, data in "
           "[-1, 1]; model calls: S each way, fixed point up to 6S to encode):", "",
           "| S | " + " | ".join(solvers) + " | ddim, fixed point |",
           "|---|" + "---:|" * (len(solvers) + 1)]
    for steps in (5, 10, 20):
        cells = []
        for solver in solvers:
            x_T = ddim.invert(model, x0, steps, solver=solver)
            mse = (ddim.sample(model, steps, x_T=x_T, solver=solver) - x0).square().mean().item()
            rows[f"inversion-solvers|{steps}|{solver}"] = mse
            cells.append(f"{mse:.2e}")
        x_T = ddim.invert(model, x0, steps, method="fixed_point")
        mse = (ddim.sample(model, steps, x_T=x_T) - x0).square().mean().item()
        rows[f"inversion-solvers|{steps}|ddim-fixed-point"] = mse
        out.append(f"| {steps} | " + " | ".join(cells) + f" | {mse:.2e} |")
        print(out[-1], file=sys.stderr, flush=True)
    return out


def _mse(model, x0: torch.Tensor, steps: int, **kw) -> float:
    x_T = ddim.invert(model, x0, steps, spacing="leading", **kw)
    return (ddim.sample(model, steps, x_T=x_T, spacing="leading") - x0).square().mean().item()


def guidance(rows: dict, n: int) -> list[str]:
    model = ddim.load_pretrained("digits-cond")
    clf = load_digits_classifier()
    labels = torch.arange(10).repeat_interleave(n // 10)
    out = [f"Classifier-free guidance on `digits-cond` ({len(labels)} samples, {n // 10} per "
           "class, S = 50, η = 0, same seeds for every w):", "",
           "| w | accuracy of the requested class | FD | time (s) |", "|---|---|---|---|"]
    for w in (0.0, 1.0, 2.0, 4.0):
        start = time.perf_counter()
        gens = sample_generators(0, 0, len(labels))  # ddim generate's seed rule, seed 0
        x = ddim.sample(model, 50, class_labels=labels, guidance_scale=w, generator=gens,
                        batch_size=len(labels), max_batch_size=500,
                        spacing="leading").clamp(-1, 1)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            acc = (clf(x).argmax(1) == labels).float().mean().item()
        fd = evaluate(x)["fd"]
        rows[f"guidance|{w}"] = dict(accuracy=acc, fd=fd, seconds=seconds)
        out.append(f"| {w:g} | {100 * acc:.1f}% | {fd:.2f} | {seconds:.0f} |")
        print(out[-1], file=sys.stderr, flush=True)
    return out


def inpainting(rows: dict) -> list[str]:
    model = ddim.load_pretrained("digits")
    clf = load_digits_classifier()
    _, _, x0, y = digits_split()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1  # the left half is known
    out = ["Inpainting the right half of the 300 held-out digits (S = 50, η = 0):", "",
           "| RePaint rounds | classifier accuracy on completions | max change of a known "
           "pixel |", "|---|---|---|"]
    with torch.no_grad():
        base = (clf(x0).argmax(1) == y).float().mean().item()
        masked = (clf(x0 * mask - (1 - mask)).argmax(1) == y).float().mean().item()
    for rounds in (0, 2):
        gens = sample_generators(0, 0, len(x0))
        filled = ddim.inpaint(model, x0, mask, 50, resample=rounds, generator=gens,
                              spacing="leading")
        with torch.no_grad():
            acc = (clf(filled.clamp(-1, 1)).argmax(1) == y).float().mean().item()
        known = (filled - x0)[..., :4].abs().max().item()
        rows[f"inpainting|{rounds}"] = dict(accuracy=acc, known_max_change=known)
        out.append(f"| {rounds} | {100 * acc:.1f}% | {known:.1e} |")
        print(out[-1], file=sys.stderr, flush=True)
    out += ["", f"(The classifier scores {100 * base:.1f}% on the complete held-out digits and "
            f"{100 * masked:.1f}% with the right half blanked.)"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=["inversion", "guidance", "inpainting"],
                   choices=["inversion", "guidance", "inpainting", "inversion-solvers"])
    p.add_argument("--n", type=int, default=1000, help="samples for the guidance table")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: dict = {}
    sections = []
    if "inversion" in args.only:
        sections.append(inversion(rows))
    if "inversion-solvers" in args.only:
        sections.append(inversion_solvers(rows))
    if "guidance" in args.only:
        sections.append(guidance(rows, args.n))
    if "inpainting" in args.only:
        sections.append(inpainting(rows))
    RESULTS.mkdir(exist_ok=True)
    name = "beyond" if len(args.only) == 3 else "beyond-" + "-".join(args.only)
    text = "\n\n".join("\n".join(s) for s in sections) + "\n"
    atomic_write_text(RESULTS / f"{name}.md", text)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(rows, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
