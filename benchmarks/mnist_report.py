"""The markdown report of benchmarks/mnist_quality.py, with issue 21's targets checked."""

from __future__ import annotations

from statistics import mean, stdev

FD_TARGET = 2.0  # mnist: FD at most 2× the real-vs-real floor
CLASS_SHARE = (0.05, 0.15)  # mnist: every class between 5% and 15% of the samples
TOP_PROBABILITY = 0.03  # mnist: mean top probability within 0.03 of the real digits'
BACKGROUND = 0.001  # both: mean background brightness at most this
ISOLATED = 0.02  # both: at most 2% of the samples with an isolated bright pixel
COND_BEFORE = dict(fd=12.06, accuracy=0.938)  # mnist-cond before issue 21 (S = 50, 3 seeds)
LABELS = {"mnist": "none (unconditional model)", "mnist-cond": "0-9, 100 each",
          "mnist-cond-null": "null class 10"}


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _headline(c: dict, kind: str, floor: float) -> list[str]:
    seeds = [c[k] for k in (f"{kind}|50|trailing|{s}" for s in range(3)) if k in c]
    if not seeds:
        return []
    fd = [v["fd_heldout"] for v in seeds]
    sd = stdev(fd) if len(fd) > 1 else 0.0
    bg = mean(v["background_brightness"] for v in seeds)
    iso = mean(v["isolated_share"] for v in seeds)
    real = c["floor"]
    lines = [f"**`{kind}`** (S = 50, trailing, η = 0, {len(fd)} seed(s)): FD vs held-out "
             f"{mean(fd):.2f} ± {sd:.2f} = {mean(fd) / floor:.2f}× the floor; background "
             f"brightness {bg:.5f} (real {real['background_brightness']:.5f}; target ≤ "
             f"{BACKGROUND:g}: {_met(bg <= BACKGROUND)}); samples with an isolated bright pixel "
             f"{100 * iso:.1f}% (real {100 * real['isolated_share']:.1f}%; target ≤ "
             f"{100 * ISOLATED:g}%: {_met(iso <= ISOLATED)})."]
    if kind == "mnist":
        shares = [n / v["n"] for v in seeds for n in v["classes"]]
        top = mean(v["mean_top_probability"] for v in seeds)
        spread = CLASS_SHARE[0] <= min(shares) and max(shares) <= CLASS_SHARE[1]
        near = abs(top - real["mean_top_probability"]) <= TOP_PROBABILITY
        lines += [f"FD target ≤ {FD_TARGET:g}× the floor: {_met(mean(fd) / floor <= FD_TARGET)}."
                  f" Class shares {100 * min(shares):.1f}%–{100 * max(shares):.1f}% over the "
                  f"seeds (target 5–15%: {_met(spread)}). Mean top probability {top:.3f} (real "
                  f"{real['mean_top_probability']:.3f}; target within {TOP_PROBABILITY:g}: "
                  f"{_met(near)})."]
    if kind == "mnist-cond":
        acc = mean(v["accuracy"] for v in seeds)
        kept = (mean(fd) <= COND_BEFORE["fd"] + sd  # the before figures are rounded to their digits
                and acc >= COND_BEFORE["accuracy"] - 5e-4)
        lines += [f"Before issue 21: FD {COND_BEFORE['fd']:.2f}, "
                  f"{100 * COND_BEFORE['accuracy']:.1f}% of labels; now {mean(fd):.2f} and "
                  f"{100 * acc:.1f}% (target: at least as good: {_met(kept)})."]
    return lines + [""]


def markdown(done: dict) -> str:
    r = done["run"]
    c = {k.split("@")[0]: v for k, v in done.items() if k == "floor" or (
        k != "run" and v.get("weights") == r["weights"].get(v.get("model")))}
    lines = [f"Bundled `mnist` and `mnist-cond` (weights sha256 "
             f"{', '.join(f'{m} {s[:12]}' for m, s in r['weights'].items())}), n = {r['num']} "
             f"samples per cell, {r['threads']} thread(s), torch {r['torch']}. Features: the "
             "shipped MNIST classifier's 64-d penultimate layer; FD against the 1000 held-out and "
             "the 4000 training digits of `mnist_split`. Backgrounds: "
             "`ddim.evaluation.background.background_stats`. η = 0 unless stated.", ""]
    if "floor" not in c:
        return "\n".join(lines) + "\n"
    f = c["floor"]
    real = f["fd_real_1000_vs_1000"]
    floor = mean(real)
    lines += [f"Real digits: classifier held-out accuracy "
              f"{100 * f['classifier_heldout_accuracy']:.1f}%, mean top probability "
              f"{f['mean_top_probability']:.3f}, background brightness "
              f"{f['background_brightness']:.5f}, isolated bright pixel in "
              f"{100 * f['isolated_share']:.1f}% of the digits. Real-vs-real floor (held-out "
              f"against three disjoint 1000-digit training subsets): "
              f"{', '.join(f'{v:.2f}' for v in real)} (mean {floor:.2f}); held-out against all "
              f"4000 training digits {f['fd_heldout_vs_train']:.2f}; clipped Gaussian noise "
              f"{f['fd_noise_vs_heldout']:.1f}.", ""]
    for m in ("mnist", "mnist-cond"):
        if f"timing|{m}" in c:
            t = c[f"timing|{m}"]
            lines += [f"`{m}`: {t['images']} images at S = {t['steps']} in one batch: "
                      f"{t['seconds']:.1f} s on {t['threads']} thread(s).", ""]
    for kind in ("mnist", "mnist-cond"):
        lines += _headline(c, kind, floor)
    rows = [v for v in c.values() if "kind" in v]
    if rows:
        lines += ["| model | labels | S | η | seed | FD vs held-out | × floor | FD vs train | "
                  "per class (0-9) | p > 0.9 | mean top p | label accuracy | background | "
                  "isolated | time (s) |", "|" + "---|" * 15]
        for v in sorted(rows, key=lambda v: (v["kind"], -v["steps"], v["eta"], v["seed"])):
            acc = f"{100 * v['accuracy']:.1f}%" if v["kind"] == "mnist-cond" else "—"
            lines.append(f"| {v['kind']} | {LABELS[v['kind']]} | {v['steps']} | {v['eta']:g} | "
                         f"{v['seed']} | {v['fd_heldout']:.2f} | {v['fd_heldout'] / floor:.2f}× | "
                         f"{v['fd_train']:.2f} | {' '.join(map(str, v['classes']))} | "
                         f"{100 * v['confident']:.1f}% | {v['mean_top_probability']:.3f} | {acc} | "
                         f"{v['background_brightness']:.5f} | {100 * v['isolated_share']:.1f}% | "
                         f"{v['seconds']:.0f} |")
        lines.append("")
    for m in ("mnist", "mnist-cond"):
        if f"memorisation|{m}" in c:
            v = c[f"memorisation|{m}"]
            lines += [f"Memorisation, `{m}` (S = 50, seed 0): nearest-training-digit L2 distance "
                      "(784 pixels in [-1, 1]) at the 1st, 5th and 50th percentile "
                      f"{', '.join(f'{x:.2f}' for x in v['samples'])} (min {v['min_samples']:.2f})"
                      f"; held-out real digits {', '.join(f'{x:.2f}' for x in v['heldout'])} (min "
                      f"{v['min_heldout']:.2f}). Samples closer to a training digit than the 1st "
                      f"percentile of held-out digits: {100 * v['fraction_below_heldout_p1']:.1f}%"
                      " (1% would match real data).", ""]
    guided = [dict(c[k], w=w) for k, w in (("mnist-cond-null|20|trailing|0", 0.0),
                                           ("mnist-cond|20|trailing|0", 1.0)) if k in c]
    guided += [v for k, v in sorted(c.items()) if k.startswith("guidance|")]
    if guided:
        lines += ["Classifier-free guidance on `mnist-cond` (S = 20, seed 0, num/10 samples per "
                  "requested class; w = 0 is the null class and w = 1 the conditional model on "
                  "the same noise, scored against the same requested labels):", "",
                  "| w | accuracy of the requested class | FD vs held-out | FD vs train | "
                  "background |", "|---|---|---|---|---|"]
        lines += [f"| {v['w']:g} | {100 * v['accuracy']:.1f}% | {v['fd_heldout']:.2f} | "
                  f"{v['fd_train']:.2f} | {v['background_brightness']:.5f} |" for v in guided]
    return "\n".join(lines) + "\n"
