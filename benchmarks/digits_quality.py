"""Quality of the bundled digits DDPM under DDIM: Fréchet distance and class coverage.

Features: the shipped digits classifier's 64-d penultimate layer (``ddim.evaluation.frechet``).
Reference: all 1797 real digits. Two yardsticks measured the same way:
  ceiling: 1000 Gaussian-noise images clipped to [-1, 1];
  floor:   1000 real digits against the other 797 (a seed-0 permutation).
Samples are clipped to [-1, 1] (the range a saved image has) before feature extraction.

    python benchmarks/digits_quality.py [--num 1000] [--steps 50 10] [--seeds 0 1 2]

Sample i of seed s uses ``ddim.sampling.noise.sample_generators(s, i, i + 1)``, the seed rule of
``ddim generate``/``sample``/``eval`` (so ``ddim eval --seed s`` gives the same FD); the table gives
each seed and the mean ± standard deviation over the seeds.

Writes benchmarks/results/digits_quality.{json,md} atomically.
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
from ddim.evaluation.digits import digits_split, load_digits_images
from ddim.evaluation.frechet import extract_features, fd_from_features
from ddim.evaluation.kits import class_histogram
from ddim.sampling.noise import sample_generators

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--steps", type=int, nargs="+", default=[50, 10])
    p.add_argument("--spacing", default="leading")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    clf = load_digits_classifier()
    real, _ = load_digits_images()
    ref = extract_features(real, clf.features)
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    floor = fd_from_features(ref[perm[:1000]], ref[perm[1000:]])
    noise = torch.randn(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    ceiling = fd_from_features(extract_features(noise, clf.features), ref)
    _, _, held_x, held_y = digits_split()
    with torch.no_grad():
        accuracy = (clf(held_x).argmax(1) == held_y).float().mean().item()

    model = ddim.load_pretrained("digits")
    training = json.loads(
        (ddim.loading.pretrained.bundled_path("digits") / "training.json").read_text())
    rows = []
    for steps, seed in ((s, seed) for s in args.steps for seed in args.seeds):
        start = time.perf_counter()
        chunks = []
        for lo in range(0, args.num, args.batch_size):
            n = min(args.batch_size, args.num - lo)
            gens = sample_generators(seed, lo, lo + n)  # ddim generate's seed rule
            chunks.append(ddim.sample(model, steps, 0.0, batch_size=n, generator=gens,
                                      spacing=args.spacing))
        seconds = time.perf_counter() - start
        x = torch.cat(chunks).clamp(-1, 1)
        fd = fd_from_features(extract_features(x, clf.features), ref)
        hist = class_histogram(x, clf).tolist()
        rows.append(dict(steps=steps, seed=seed, eta=0.0, spacing=args.spacing, n=args.num,
                         fd=fd, fd_over_noise=fd / ceiling, classes=hist, seconds=seconds))
        print(f"S={steps}, seed {seed}: FD {fd:.2f} ({100 * fd / ceiling:.2f}% of noise), "
              f"classes {hist}, {seconds:.1f} s", file=sys.stderr)

    report = dict(model_training_steps=training["steps"], classifier_heldout_accuracy=accuracy,
                  fd_noise_ceiling=ceiling, fd_real_floor=floor, seeds=args.seeds,
                  torch=torch.__version__, threads=args.threads, rows=rows)
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "digits_quality.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(RESULTS / "digits_quality.md", _markdown(report))
    print(_markdown(report))
    return 0


def _markdown(r: dict) -> str:
    lines = [
        f"Bundled `digits` model ({r['model_training_steps']} training steps); features of the "
        f"digits classifier (held-out accuracy {100 * r['classifier_heldout_accuracy']:.1f}%); "
        f"reference: all 1797 real digits; seeds {', '.join(map(str, r['seeds']))} (the seed "
        "rule of `ddim generate`).",
        "",
        "| sampler | seed | n | FD | FD / noise FD | samples per class (0-9) | time (s) |",
        "|---|---|---|---|---|---|---|",
        f"| noise (ceiling) | | 1000 | {r['fd_noise_ceiling']:.1f} | 100% | | |",
        f"| real digits (floor) | | 1000 vs 797 | {r['fd_real_floor']:.2f} | "
        f"{100 * r['fd_real_floor'] / r['fd_noise_ceiling']:.2f}% | | |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| DDIM S={row['steps']}, η=0, {row['spacing']} | {row['seed']} | {row['n']} | "
            f"{row['fd']:.2f} | {100 * row['fd_over_noise']:.2f}% | "
            f"{' '.join(map(str, row['classes']))} | {row['seconds']:.1f} |")
    lines.append("")
    for steps in dict.fromkeys(row["steps"] for row in r["rows"]):
        fds = torch.tensor([row["fd"] for row in r["rows"] if row["steps"] == steps],
                           dtype=torch.float64)
        spread = f" ± {fds.std().item():.2f}" if len(fds) > 1 else ""
        lines.append(f"S = {steps}: FD {fds.mean().item():.2f}{spread} (mean ± std over "
                     f"{len(fds)} seed{'s' if len(fds) > 1 else ''}).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
