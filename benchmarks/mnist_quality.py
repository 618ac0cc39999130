"""Quality of the bundled 28×28 `mnist` DDPM under DDIM: FD, classes, memorisation, guidance.

Features and predictions: the shipped MNIST classifier (``load_classifier("mnist")``, 64-d
SiLU penultimate layer). Real digits: the fixed split of ``ddim.evaluation.mnist.mnist_split`` (4000
training, 1000 held-out digits). Every FD is at n = 1000 samples, against the 1000 held-out
digits AND against the 4000 training digits. Samples are clipped to [-1, 1] (the range a saved
image has) before they are measured. Sample i of seed s starts from the noise of
``ddim.sampling.noise.sample_generators(s, i, i + 1)`` (one generator per sample), so a cell does
not depend on the batch size.

Cells (each saved to the JSON as soon as it is finished; a rerun skips finished cells):
- floor: real against real, two disjoint sets of 1000 (held-out against three disjoint
  1000-digit subsets of the training split), and held-out 1000 against the 4000 training digits
  (the floor of the "vs train" column); the noise ceiling; the classifier's accuracy.
- timing: wall time of 64 unconditional samples at S = 50, η = 0 (one batch).
- uncond|S|spacing|seed: unconditional samples (the null class 10 as label), η = 0, S in
  {50, 20, 10}, spacing trailing (the library's default) and leading (the paper's grid);
  seeds 0, 1, 2 for the headline S = 50 trailing; ``|eta1``: the same with η = 1.
- cond|S|spacing|seed: conditional samples, num/10 per class (labels 0, 0, ..., 9), no
  guidance (one forward per step, like uncond), η = 0; seeds 0, 1, 2 at S = 50 trailing.
- memorisation: for each sample of the headline cell (seed 0) the L2 distance (pixels in
  [-1, 1], 784-d) to its nearest training digit, against the same for the held-out digits.
- guidance|w: num/10 samples per requested class, S = 20 trailing, η = 0, seed 0, w in {2, 4};
  the accuracy of the requested class. The w = 0 row is the unconditional cell
  uncond|20|trailing|0 and the w = 1 row the conditional cell cond|20|trailing|0 (the same
  noise; w = 1 is the conditional model), scored against the same requested labels.

    python benchmarks/mnist_quality.py [--num 1000] [--threads 1] [--only floor uncond ...]
    python benchmarks/mnist_quality.py --shard 0/2 &   # two processes share the cells
    python benchmarks/mnist_quality.py --shard 1/2

Every finished cell is merged into benchmarks/results/mnist_quality.json at once (atomically,
under a file lock: benchmarks/cells.py), and mnist_quality.md is redrawn from it. Cells of
another model (its training steps differ) or another n are refused.
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
from ddim.evaluation.classifiers import load_classifier
from ddim.evaluation.frechet import extract_features, fd_from_features
from ddim.evaluation.mnist import mnist_split
from ddim.sampling.noise import sample_generators

sys.path.insert(0, str(Path(__file__).parent))
from cells import load_cells, save_cells, shard_arg  # noqa: E402  (benchmarks/cells.py)

RESULTS = Path(__file__).parent / "results"
HEADLINE_SAMPLES = "mnist_headline_samples.pt"  # in the results folder, git-ignored (*.pt)
TARGET_RATIO = 3.0  # issue 14: headline FD at most 3× the real-vs-real floor
NULL_CLASS = 10
HEADLINE = (50, "trailing")
# (kind, S, spacing, seed), most important first (two shards alternate through the list)
SAMPLED = [(kind, s, "trailing", seed) for s, seeds in ((50, (0, 1, 2)), (20, (0,)), (10, (0,)))
           for seed in seeds for kind in ("uncond", "cond")]
LATER = [("uncond", 50, "trailing", 0, 1.0), ("uncond", 20, "trailing", 0, 1.0),
         ("uncond", 50, "leading", 0, 0.0), ("uncond", 20, "leading", 0, 0.0),
         ("uncond", 10, "leading", 0, 0.0)]  # (kind, S, spacing, seed, η): after guidance
GUIDED = (20, "trailing")  # S and spacing of the guidance cells (w = 0, 1: the sampled cells)
GUIDANCE = (2.0, 4.0)


class Bench:
    """The model, the classifier and the real digits' features, loaded once."""

    def __init__(self, num: int, batch_size: int, out: Path) -> None:
        self.num, self.batch_size = num, batch_size
        self.headline_samples = out / HEADLINE_SAMPLES
        self.model = ddim.load_pretrained("mnist")
        self.clf = load_classifier("mnist")
        self.train_x, _, self.held_x, self.held_y = mnist_split()
        self.train_f = extract_features(self.train_x, self.clf.features)
        self.held_f = extract_features(self.held_x, self.clf.features)

    def sample(self, steps: int, spacing: str, seed: int, labels: torch.Tensor | None = None,
               guidance_scale: float | None = None, clip_sample: float | None = None,
               eta: float = 0.0) -> tuple[torch.Tensor, float]:
        """``num`` samples (null class unless ``labels``), clipped, and the seconds taken."""
        chunks, start = [], time.perf_counter()
        for lo in range(0, self.num, self.batch_size):
            hi = min(lo + self.batch_size, self.num)
            kw = (dict(model_kwargs={"class_labels": torch.full((hi - lo,), NULL_CLASS)})
                  if labels is None else
                  dict(class_labels=labels[lo:hi], guidance_scale=guidance_scale))
            chunks.append(ddim.sample(self.model, steps, eta, batch_size=hi - lo,
                                      spacing=spacing, generator=sample_generators(seed, lo, hi),
                                      clip_sample=clip_sample, **kw))
            print(f"  {hi}/{self.num} samples, {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
        return torch.cat(chunks).clamp(-1, 1), time.perf_counter() - start

    @torch.no_grad()
    def measure(self, x: torch.Tensor) -> dict:
        """FD to held-out and training digits, class histogram, classifier confidence, and
        how often the predicted class is the one :meth:`labels` would request."""
        f = extract_features(x, self.clf.features)
        probs = torch.cat([self.clf(x[i:i + 500]).softmax(1) for i in range(0, len(x), 500)])
        preds = probs.argmax(1)
        return dict(fd_heldout=fd_from_features(f, self.held_f),
                    fd_train=fd_from_features(f, self.train_f),
                    classes=torch.bincount(preds, minlength=10).tolist(),
                    confident=(probs.max(1).values > 0.9).float().mean().item(),
                    accuracy=(preds == self.labels()).float().mean().item())

    def labels(self) -> torch.Tensor:
        """num/10 requested labels per class: 0, 0, ..., 1, 1, ..., 9."""
        return torch.arange(self.num) * 10 // self.num


def floor(b: Bench) -> dict:
    perm = torch.randperm(len(b.train_x), generator=torch.Generator().manual_seed(0))
    subsets = [perm[i * 1000:(i + 1) * 1000] for i in range(3)]
    noise = torch.randn(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    with torch.no_grad():
        accuracy = (b.clf(b.held_x).argmax(1) == b.held_y).float().mean().item()
    return dict(fd_real_1000_vs_1000=[fd_from_features(b.train_f[s], b.held_f) for s in subsets],
                fd_heldout_vs_train=fd_from_features(b.held_f, b.train_f),
                fd_noise_vs_heldout=fd_from_features(
                    extract_features(noise, b.clf.features), b.held_f),
                classifier_heldout_accuracy=accuracy)


def timing(b: Bench) -> dict:
    null = {"class_labels": torch.full((64,), NULL_CLASS)}
    ddim.sample(b.model, 2, batch_size=64, model_kwargs=null)  # warm-up
    start = time.perf_counter()
    ddim.sample(b.model, 50, 0.0, batch_size=64, model_kwargs=null,
                generator=sample_generators(0, 0, 64))
    return dict(images=64, steps=50, seconds=time.perf_counter() - start,
                threads=torch.get_num_threads())


def uncond(b: Bench, steps: int, spacing: str, seed: int, clip: float | None = None,
           eta: float = 0.0, conditional: bool = False) -> dict:
    labels = b.labels() if conditional else None
    x, seconds = b.sample(steps, spacing, seed, labels=labels, clip_sample=clip, eta=eta)
    if (steps, spacing, seed, clip, eta, conditional) == (*HEADLINE, 0, None, 0.0, False):
        torch.save(x, b.headline_samples)
    return dict(steps=steps, spacing=spacing, seed=seed, eta=eta, n=len(x), seconds=seconds,
                clip_sample=clip, conditional=conditional, **b.measure(x))


def _headline(b: Bench) -> torch.Tensor:
    if not b.headline_samples.exists():
        uncond(b, *HEADLINE, 0)
    return torch.load(b.headline_samples)


def memorisation(b: Bench) -> dict:
    x = _headline(b)
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
    x, seconds = b.sample(*GUIDED, 0, labels=b.labels(), guidance_scale=w)
    return dict(w=w, steps=GUIDED[0], spacing=GUIDED[1], seed=0, n=len(x), seconds=seconds,
                **b.measure(x))


def cells(b: Bench) -> dict:
    out = {"floor": lambda: floor(b), "timing": lambda: timing(b)}
    for kind, s, sp, seed in SAMPLED:
        out[f"{kind}|{s}|{sp}|{seed}"] = lambda s=s, sp=sp, seed=seed, kind=kind: uncond(
            b, s, sp, seed, conditional=kind == "cond")
    out["memorisation"] = lambda: memorisation(b)  # after the headline seed-0 cell
    for w in GUIDANCE:
        out[f"guidance|{w:g}"] = lambda w=w: guidance(b, w)
    for kind, s, sp, seed, eta in LATER:
        name = f"{kind}|{s}|{sp}|{seed}" + ("|eta1" if eta == 1.0 else "")
        out[name] = lambda s=s, sp=sp, seed=seed, eta=eta: uncond(b, s, sp, seed, eta=eta)
    return out


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
    training = json.loads(
        (ddim.loading.pretrained.bundled_path("mnist") / "training.json").read_text())
    run = dict(num=args.num, model_training_steps=training["steps"], torch=torch.__version__,
               threads=args.threads)
    done = load_cells(json_path)
    if "run" in done and {k: done["run"][k] for k in ("num", "model_training_steps")} != {
            k: run[k] for k in ("num", "model_training_steps")}:
        raise SystemExit(f"{json_path} holds cells of another run ({done['run']}); move it away")
    done = save_cells(json_path, {"run": run})
    b = Bench(args.num, args.batch_size, args.out)
    index, count = args.shard
    todo = [name for name in cells(b) if name not in done and name != "memorisation"
            and (not args.only or name.startswith(tuple(args.only)))][index::count]
    headline = f"uncond|{HEADLINE[0]}|{HEADLINE[1]}|0"
    if "memorisation" not in done and (headline in todo or (headline in done and index == 0)):
        todo.insert(todo.index(headline) + 1 if headline in todo else 0, "memorisation")
    for name in todo:  # memorisation runs in the process that made the headline samples
        print(f"{name} ...", file=sys.stderr, flush=True)
        done = save_cells(json_path, {name: cells(b)[name]()})
        print(f"{name}: {json.dumps(done[name])}", file=sys.stderr, flush=True)
        atomic_write_text(md_path, markdown(done))
    atomic_write_text(md_path, markdown(load_cells(json_path)))
    print(markdown(load_cells(json_path)))
    return 0


def markdown(done: dict) -> str:
    r, c = done["run"], {k: v for k, v in done.items() if k != "run"}
    lines = [f"Bundled `mnist` model ({r['model_training_steps']} training steps), n = "
             f"{r['num']} samples per cell, {r['threads']} thread(s), torch {r['torch']}. "
             "Features: the shipped MNIST classifier's 64-d penultimate layer; FD against the "
             "1000 held-out and the 4000 training digits of `mnist_split`. Unconditional = the "
             "null class 10 as label. η = 0 unless stated.", ""]
    if "floor" in c:
        f = c["floor"]
        real = f["fd_real_1000_vs_1000"]
        lines += [f"Classifier held-out accuracy {100 * f['classifier_heldout_accuracy']:.1f}%. "
                  f"Real-vs-real floor (1000 vs 1000, held-out against three disjoint training "
                  f"subsets): {', '.join(f'{v:.2f}' for v in real)} (mean "
                  f"{sum(real) / len(real):.2f}); held-out 1000 against the 4000 training "
                  f"digits: {f['fd_heldout_vs_train']:.2f}; clipped Gaussian noise against "
                  f"held-out: {f['fd_noise_vs_heldout']:.1f}.", ""]
    if "timing" in c:
        t = c["timing"]
        lines += [f"Sampling {t['images']} images at S = {t['steps']}: {t['seconds']:.1f} s on "
                  f"{t['threads']} thread(s).", ""]
    hs, hsp = HEADLINE
    for kind, what in (("uncond", "unconditional"), ("cond", "conditional, 100 per class")):
        seeds = [c[f"{kind}|{hs}|{hsp}|{s}"]["fd_heldout"] for s in range(3)
                 if f"{kind}|{hs}|{hsp}|{s}" in c]
        if not seeds or "floor" not in c:
            continue
        real = c["floor"]["fd_real_1000_vs_1000"]
        mean, floor_mean = sum(seeds) / len(seeds), sum(real) / len(real)
        sd = (sum((v - mean) ** 2 for v in seeds) / max(len(seeds) - 1, 1)) ** 0.5
        ratio = mean / floor_mean
        lines += [f"Headline, {what} (S = {hs}, {hsp}, η = 0, {len(seeds)} seed(s)): FD vs "
                  f"held-out {mean:.2f} ± {sd:.2f} (mean ± sd over seeds) = {ratio:.2f}× the "
                  f"real-vs-real floor {floor_mean:.2f}; target ≤ {TARGET_RATIO:g}×: "
                  f"{'met' if ratio <= TARGET_RATIO else 'missed'}.", ""]
    rows = [(k, v) for k, v in c.items() if k.startswith(("uncond|", "cond|"))]
    if rows:
        lines += ["| sampler | labels | seed | FD vs held-out | FD vs train | samples per class "
                  "(0-9) | confident (p > 0.9) | time (s) |", "|---|---|---|---|---|---|---|---|"]
        for _, v in sorted(rows, key=lambda kv: (-kv[1]["steps"], kv[1]["spacing"] != "trailing",
                                                 kv[1].get("eta", 0.0), kv[1]["seed"],
                                                 kv[1].get("conditional", False))):
            extra = ", x̂0 clipped to [-1, 1]" if v.get("clip_sample") else ""
            extra += f", η = {v['eta']:g}" if v.get("eta") else ""
            labels = "0-9, 100 each" if v.get("conditional") else "null (10)"
            lines.append(f"| DDIM S={v['steps']}, {v['spacing']}{extra} | {labels} | "
                         f"{v['seed']} | {v['fd_heldout']:.2f} | {v['fd_train']:.2f} | "
                         f"{' '.join(map(str, v['classes']))} | {100 * v['confident']:.1f}% | "
                         f"{v['seconds']:.0f} |")
        lines.append("")
    if "memorisation" in c:
        m = c["memorisation"]
        lines += ["Nearest-training-digit L2 distance (784 pixels in [-1, 1]) at the 1st, 5th "
                  "and 50th percentile: samples (S=50, seed 0) "
                  f"{', '.join(f'{v:.2f}' for v in m['samples'])} (min {m['min_samples']:.2f});"
                  f" held-out real digits {', '.join(f'{v:.2f}' for v in m['heldout'])} "
                  f"(min {m['min_heldout']:.2f}). Samples closer to a training digit than the "
                  f"1st percentile of held-out digits: "
                  f"{100 * m['fraction_below_heldout_p1']:.1f}% (1% would match real data).",
                  ""]
    sampled = [(c.get(f"{kind}|{GUIDED[0]}|{GUIDED[1]}|0"), w) for kind, w in
               (("uncond", 0.0), ("cond", 1.0))]
    rows = [dict(v, w=w) for v, w in sampled if v] + [
        v for k, v in sorted(c.items()) if k.startswith("guidance|")]
    if rows:
        lines += [f"Classifier-free guidance ({r['num'] // 10} samples per requested class, "
                  f"S = {GUIDED[0]} {GUIDED[1]}, seed 0; the w = 0 row is the unconditional "
                  "cell and the w = 1 row the conditional cell of the same noise, scored "
                  "against the same requested labels):", "",
                  "| w | accuracy of the requested class | FD vs held-out | FD vs train | "
                  "time (s) |", "|---|---|---|---|---|"]
        for v in rows:
            secs = "(reused)" if v["seconds"] is None else f"{v['seconds']:.0f}"
            lines.append(f"| {v['w']:g} | {100 * v['accuracy']:.1f}% | {v['fd_heldout']:.2f} | "
                         f"{v['fd_train']:.2f} | {secs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
