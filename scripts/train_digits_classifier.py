"""Train the evaluation classifier for 8×8 digits and ship its weights.

Trains :class:`ddim.evaluation.classifiers.DigitsClassifier` on the 1497 training digits of
:func:`ddim.evaluation.digits.digits_split` (random shifts of up to one pixel as augmentation,
fixed seeds, one CPU thread), reports the accuracy on the 300 held-out digits, and saves the
weights to ``src/ddim/weights/digits-classifier.safetensors`` (atomically) and a summary to
``runs/classifier.json``. Refuses to save weights whose held-out accuracy is below 98%.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ddim.evaluation.classifiers import DigitsClassifier
from ddim.evaluation.digits import digits_split

MIN_ACCURACY = 0.98
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/ddim/weights/digits-classifier.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--summary", type=Path, default=Path("runs/classifier.json"))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with background -1."""
    b, _, h, w = x.shape
    k = max_shift
    padded = F.pad(x, (k, k, k, k), value=-1.0)
    dy = torch.randint(0, 2 * k + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * k + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified as ``y``."""
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def train(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> DigitsClassifier:
    """AdamW with a cosine learning-rate decay over ``args.epochs`` shuffled epochs."""
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = -(-x.shape[0] // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * steps_per_epoch)
    for _ in range(args.epochs):
        model.train()
        for idx in torch.randperm(x.shape[0], generator=gen).split(args.batch_size):
            loss = F.cross_entropy(model(random_shift(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def save_weights(model: DigitsClassifier, out: Path) -> None:
    """Write the state dict as safetensors to a temporary file, then rename it over ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"model": "ddim.evaluation.classifiers.DigitsClassifier"})
    tmp.chmod(0o644)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate on the held-out split, and save if accurate enough."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    train_x, train_y, heldout_x, heldout_y = digits_split()
    start = time.perf_counter()
    model = train(args, train_x, train_y)
    seconds = time.perf_counter() - start
    summary = {
        "heldout_accuracy": accuracy(model, heldout_x, heldout_y),
        "train_accuracy": accuracy(model, train_x, train_y),
        "train_seconds": round(seconds, 1),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "num_train": train_x.shape[0], "num_heldout": heldout_x.shape[0],
    }
    print(json.dumps(summary, indent=2))
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    if summary["heldout_accuracy"] < MIN_ACCURACY:
        raise SystemExit(
            f"held-out accuracy {summary['heldout_accuracy']:.4f} < {MIN_ACCURACY}: not saved"
        )
    save_weights(model, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
