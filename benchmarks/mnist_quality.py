"""Quality of the bundled 28×28 models `mnist` (unconditional) and `mnist-cond` under DDIM.

FD, classes, classifier confidence, clean backgrounds, memorisation and guidance (issue 21).

Features and predictions: the shipped MNIST classifier (``load_classifier("mnist")``, 64-d
SiLU penultimate layer). Real digits: the fixed split of ``ddim.evaluation.mnist.mnist_split``
(4000 training, 1000 held-out digits). Every FD is at n = 1000 samples, against the 1000
held-out digits and against the 4000 training digits. Samples are clipped to [-1, 1] (the range
a saved image has) before they are measured. Sample i of seed s starts from the noise of
``ddim.sampling.noise.sample_generators(s, i, i + 1)``, so a cell does not depend on the batch
size. Backgrounds: ``ddim.evaluation.background.background_stats`` (mean brightness of the
pixels more than 2 px from any stroke pixel, share of images with an isolated bright pixel).

Cells (each saved to the JSON as soon as it is finished; a rerun skips finished cells):
- floor: real against real (held-out against three disjoint 1000-digit training subsets), the
  held-out digits against all 4000 training digits, clipped noise, the classifier's accuracy,
  its mean top probability and the background statistics of the held-out digits.
- timing|MODEL: the README's first command (64 images, S = 50, one batch) on this process's
  threads.
- MODEL|S|spacing|seed: ``mnist`` unconditional; ``mnist-cond`` with num/10 labels per class
  and no guidance; ``mnist-cond-null`` the conditional model's null class 10. η = 0, S in
  {50, 20, 10}, trailing; seeds 0, 1, 2 at S = 50; ``|eta1`` the same with η = 1.
- memorisation|MODEL: for each sample of the model's S = 50 seed-0 cell, the L2 distance (784
  pixels in [-1, 1]) to its nearest training digit, against the same for the held-out digits.
- guidance|w: ``mnist-cond``, num/10 samples per requested class, S = 20, seed 0, w in {2, 4}.

    python benchmarks/mnist_quality.py [--num 1000] [--threads 1] [--only mnist| floor ...]
    python benchmarks/mnist_quality.py --shard 0/2 &   # two processes share the cells
    python benchmarks/mnist_quality.py --shard 1/2

Every finished cell is merged into benchmarks/results/mnist_quality.json at once (atomically,
under a file lock: benchmarks/cells.py), and mnist_quality.md is redrawn from it. A cell's name
ends in the sha256 of the weights it sampled, so retrained weights get new cells and the
report shows only those of the bundled weights; a file of another n is refused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import ddim
from ddim.atomic import atomic_write_text
from ddim.evaluation.background import background_stats
from ddim.evaluation.classifiers import load_classifier
from ddim.evaluation.frechet import extract_features, fd_from_features
from ddim.evaluation.mnist import mnist_split
from ddim.loading.identity import weights_identity
from ddim.sampling.noise import sample_generators

sys.path.insert(0, str(Path(__file__).parent))
from cells import load_cells, save_cells, shard_arg  # noqa: E402  (benchmarks/cells.py)
from mnist_report import markdown  # noqa: E402  (benchmarks/mnist_report.py)

RESULTS = Path(__file__).parent / "results"
MODELS = ("mnist", "mnist-cond")
KINDS = {"mnist": ("mnist", "none"), "mnist-cond": ("mnist-cond", "balanced"),
         "mnist-cond-null": ("mnist-cond", "null")}  # cell kind -> (model, labels)
NULL_CLASS = 10
HEADLINE_STEPS = 50
SAMPLED = [(kind, s, seed) for s, seeds in ((50, (0, 1, 2)), (20, (0,)), (10, (0,)))
           for seed in seeds for kind in ("mnist", "mnist-cond")]
LATER = [("mnist-cond-null", 50, 0, 0.0), ("mnist-cond-null", 20, 0, 0.0),
         ("mnist", 20, 0, 1.0)]  # (kind, S, seed, η)
GUIDED_STEPS = 20
GUIDANCE = (2.0, 4.0)


class Bench:
    """The models, the classifier and the real digits' features, loaded once."""

    def __init__(self, num: int, batch_size: int, out: Path) -> None:
        self.num, self.batch_size, self.out = num, batch_size, out
        self.models = {name: ddim.load_pretrained(name) for name in MODELS}
        self.weights = {m: weights_identity(self.models[m].model)["sha256"] for m in MODELS}
        self.clf = load_classifier("mnist")
        self.train_x, _, self.held_x, self.held_y = mnist_split()
        self.train_f = extract_features(self.train_x, self.clf.features)
        self.held_f = extract_features(self.held_x, self.clf.features)

    def sample(self, kind: str, steps: int, seed: int, eta: float = 0.0,
               guidance_scale: float | None = None) -> tuple[torch.Tensor, float]:
        """``num`` samples of a cell kind, clipped, and the seconds taken."""
        model, labels = KINDS[kind]
        chunks, start = [], time.perf_counter()
        for lo in range(0, self.num, self.batch_size):
            hi = min(lo + self.batch_size, self.num)
            kw = {"none": {}, "null": {"class_labels": NULL_CLASS},
                  "balanced": {"class_labels": self.labels()[lo:hi],
                               "guidance_scale": guidance_scale}}[labels]
            chunks.append(ddim.sample(self.models[model], steps, eta, batch_size=hi - lo,
                                      generator=sample_generators(seed, lo, hi), **kw))
            print(f"  {hi}/{self.num} samples, {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
        return torch.cat(chunks).clamp(-1, 1), time.perf_counter() - start

    @torch.no_grad()
    def measure(self, x: torch.Tensor) -> dict:
        """FD to held-out and training digits, classes, confidence, backgrounds, and how
        often the predicted class is the one :meth:`labels` would request."""
        f = extract_features(x, self.clf.features)
        probs = self.probabilities(x)
        preds = probs.argmax(1)
        return dict(fd_heldout=fd_from_features(f, self.held_f),
                    fd_train=fd_from_features(f, self.train_f),
                    classes=torch.bincount(preds, minlength=10).tolist(),
                    confident=(probs.max(1).values > 0.9).float().mean().item(),
                    mean_top_probability=probs.max(1).values.mean().item(),
                    accuracy=(preds == self.labels()).float().mean().item(),
                    **_background(x))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.clf(x[i:i + 500]).softmax(1) for i in range(0, len(x), 500)])

    def labels(self) -> torch.Tensor:
        """num/10 requested labels per class: 0, 0, ..., 1, 1, ..., 9."""
        return torch.arange(self.num) * 10 // self.num

    def samples_file(self, kind: str) -> Path:
        sha = self.weights[KINDS[kind][0]][:12]
        return self.out / f"mnist_samples_{kind}_{sha}.pt"  # git-ignored (*.pt)


def _background(x: torch.Tensor) -> dict:
    stats = background_stats(x)
    return {k: stats[k] for k in ("background_brightness", "background_fraction",
                                  "isolated_share")}


@torch.no_grad()
def floor(b: Bench) -> dict:
    perm = torch.randperm(len(b.train_x), generator=torch.Generator().manual_seed(0))
    subsets = [perm[i * 1000:(i + 1) * 1000] for i in range(3)]
    noise = torch.randn(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    probs = b.probabilities(b.held_x)
    return dict(fd_real_1000_vs_1000=[fd_from_features(b.train_f[s], b.held_f) for s in subsets],
                fd_heldout_vs_train=fd_from_features(b.held_f, b.train_f),
                fd_noise_vs_heldout=fd_from_features(
                    extract_features(noise, b.clf.features), b.held_f),
                classifier_heldout_accuracy=(probs.argmax(1) == b.held_y).float().mean().item(),
                mean_top_probability=probs.max(1).values.mean().item(),
                classes=torch.bincount(probs.argmax(1), minlength=10).tolist(),
                **_background(b.held_x))


def timing(b: Bench, model: str) -> dict:
    """The README's first command's sampling: 64 images at S = 50 in one batch."""
    kw = {} if model == "mnist" else {"class_labels": torch.arange(64) % 10}
    ddim.sample(b.models[model], 2, batch_size=64, **kw)  # warm-up
    start = time.perf_counter()
    ddim.sample(b.models[model], 50, 0.0, batch_size=64, generator=sample_generators(0, 0, 64),
                **kw)
    return dict(model=model, images=64, steps=50, seconds=time.perf_counter() - start,
                threads=torch.get_num_threads())


def sampled(b: Bench, kind: str, steps: int, seed: int, eta: float = 0.0) -> dict:
    x, seconds = b.sample(kind, steps, seed, eta=eta)
    if (steps, seed, eta) == (HEADLINE_STEPS, 0, 0.0):
        torch.save(x, b.samples_file(kind))
    return dict(kind=kind, steps=steps, spacing="trailing", seed=seed, eta=eta, n=len(x),
                seconds=seconds, **b.measure(x))


def memorisation(b: Bench, kind: str) -> dict:
    if not b.samples_file(kind).exists():
        sampled(b, kind, HEADLINE_STEPS, 0)
    x = torch.load(b.samples_file(kind))
    train = b.train_x.flatten(1)
    d_samples = torch.cdist(x.flatten(1), train).min(dim=1).values
    d_held = torch.cdist(b.held_x.flatten(1), train).min(dim=1).values
    q = torch.tensor([0.01, 0.05, 0.5])
    p1_held = torch.quantile(d_held, 0.01)
    return dict(percentiles=[1, 5, 50], samples=torch.quantile(d_samples, q).tolist(),
                heldout=torch.quantile(d_held, q).tolist(), min_samples=d_samples.min().item(),
                min_heldout=d_held.min().item(),
                fraction_below_heldout_p1=(d_samples < p1_held).float().mean().item())


def guidance(b: Bench, w: float) -> dict:
    x, seconds = b.sample("mnist-cond", GUIDED_STEPS, 0, guidance_scale=w)
    return dict(w=w, steps=GUIDED_STEPS, seed=0, n=len(x), seconds=seconds, **b.measure(x))


def cells(b: Bench) -> dict:
    """Every cell by name, ``NAME@SHA``: the first 12 hex digits of the sha256 of the weights
    it samples (none for floor), so that retrained weights get cells of their own."""
    out = {"floor": (None, lambda: floor(b))}
    out.update({f"timing|{m}": (m, lambda m=m: timing(b, m)) for m in MODELS})
    for kind, s, seed in SAMPLED:
        out[f"{kind}|{s}|trailing|{seed}"] = (KINDS[kind][0], lambda kind=kind, s=s, seed=seed:
                                              sampled(b, kind, s, seed))
    out.update({f"memorisation|{m}": (m, lambda m=m: memorisation(b, m)) for m in MODELS})
    out.update({f"guidance|{w:g}": ("mnist-cond", lambda w=w: guidance(b, w)) for w in GUIDANCE})
    for kind, s, seed, eta in LATER:
        name = f"{kind}|{s}|trailing|{seed}" + ("|eta1" if eta == 1.0 else "")
        out[name] = (KINDS[kind][0], lambda kind=kind, s=s, seed=seed, eta=eta:
                     sampled(b, kind, s, seed, eta))
    named = {}
    for name, (model, run) in out.items():
        if model is None:
            named[name] = run
            continue
        sha = b.weights[model]
        named[f"{name}@{sha[:12]}"] = lambda run=run, model=model, sha=sha: dict(
            run(), model=model, weights=sha)
    return named


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="+", default=None,
                   help="run only cells whose name starts with one of these")
    p.add_argument("--shard", type=shard_arg, default=(0, 1), metavar="I/N",
                   help="run only every N-th remaining cell, from the I-th (default 0/1)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = p.parse_args(argv)
    json_path, md_path = args.out / "mnist_quality.json", args.out / "mnist_quality.md"
    if args.num < 10 or args.num % 10:
        raise SystemExit(f"--num must be a multiple of 10, at least 10, got {args.num}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    b = Bench(args.num, args.batch_size, args.out)
    run = dict(num=args.num, torch=torch.__version__, threads=args.threads, weights=b.weights)
    done = load_cells(json_path)
    if "run" in done and done["run"]["num"] != args.num:
        raise SystemExit(f"{json_path} holds cells of n = {done['run']['num']}, not "
                         f"{args.num}; move it away")
    done = save_cells(json_path, {"run": run})
    index, count = args.shard
    todo = [name for name in cells(b) if name not in done
            and (not args.only or name.startswith(tuple(args.only)))][index::count]
    for name in todo:
        print(f"{name} ...", file=sys.stderr, flush=True)
        done = save_cells(json_path, {name: cells(b)[name]()})
        print(f"{name}: done", file=sys.stderr, flush=True)
        atomic_write_text(md_path, markdown(done))
    atomic_write_text(md_path, markdown(load_cells(json_path)))
    print(markdown(load_cells(json_path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
