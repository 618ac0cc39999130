"""Train the bundled 8×8-digits DDPM from scratch (ε-prediction, T=1000, linear β).

The model is trained on the 1497 training digits of :func:`ddim.evaluation.digits.digits_split`,
with an EMA of its weights; every ``--save-every`` steps and at the end the EMA weights are written
as a diffusers ``DDPMPipeline`` folder (safetensors) plus a ``training.json`` describing the run.
Each save is atomic: the folder is written beside the target and then swapped in.

Uses one CPU thread (``torch.set_num_threads(1)``). Example::

    python scripts/train_digits.py --steps 12000 --out src/ddim/weights/digits \\
        --log runs/train_digits.jsonl --state runs/train_digits_state.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ddim import NoiseSchedule
from ddim.evaluation.digits import digits_split

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12000, help="optimizer steps in total")
    p.add_argument("--out", type=Path, default=Path("src/ddim/weights/digits"),
                   help="DDPMPipeline folder to write (replaced atomically)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", type=Path, default=None, help="JSONL file: mean loss per 100 steps")
    p.add_argument("--state", type=Path, default=None,
                   help="resume file (model, EMA, optimizer, RNG); resumes if it exists")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--cond", action="store_true",
                   help="class-conditional model (num_class_embeds=11: digits 0-9 and the "
                        "null class 10 for classifier-free guidance)")
    p.add_argument("--norm-num-groups", type=int, default=8,
                   help="GroupNorm groups of the UNet (32 for the benchmarks' held-out model)")
    p.add_argument("--label-dropout", type=float, default=0.1,
                   help="with --cond: probability of replacing a label by the null class")
    return p.parse_args(argv)


NULL_CLASS = 10  # the "no label" class of the conditional model


def make_unet(cond: bool = False, norm_num_groups: int = 8) -> UNet2DModel:
    """The bundled model: a two-level UNet for 1×8×8 images (about 0.65M parameters).

    ``cond``: add a class embedding for the labels 0..9 and the null class 10.
    """
    return UNet2DModel(
        num_class_embeds=NULL_CLASS + 1 if cond else None,
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=norm_num_groups,
    )


def make_scheduler() -> DDPMScheduler:
    """The diffusers scheduler stored with the model (the schedule it was trained with)."""
    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="linear",
        beta_start=BETA_START,
        beta_end=BETA_END,
        clip_sample=False,
        prediction_type="epsilon",
    )


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up to ``base``, then cosine decay to ``base / 10`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def ema_decay(step: int, max_decay: float) -> float:
    """EMA decay with the usual warm-up: ``min(max_decay, (1 + step) / (10 + step))``."""
    return min(max_decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 - decay)·model, parameter by parameter."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)


def diffusion_loss(
    model: UNet2DModel, x0: torch.Tensor, alphas_cumprod: torch.Tensor, gen: torch.Generator,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """ε-prediction MSE at uniformly drawn t: x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε."""
    t = torch.randint(0, alphas_cumprod.numel(), (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * eps
    return F.mse_loss(model(x_t, t, class_labels=labels).sample, eps)


class BatchSampler:
    """Mini-batches from shuffled epochs of ``data``, driven by a seeded generator."""

    def __init__(self, data: torch.Tensor, batch_size: int, gen: torch.Generator) -> None:
        self.data, self.batch_size, self.gen = data, batch_size, gen
        self._order = torch.empty(0, dtype=torch.int64)

    def next(self) -> torch.Tensor:
        """The next batch; a new permutation is appended whenever fewer than a batch remain."""
        return self.data[self.next_indices()]

    def next_indices(self) -> torch.Tensor:
        """Indices of the next batch into ``data``."""
        while self._order.numel() < self.batch_size:
            perm = torch.randperm(self.data.shape[0], generator=self.gen)
            self._order = torch.cat([self._order, perm])
        idx, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return idx


def _make_readable(folder: Path) -> None:
    """Give the written folder ordinary permissions (``mkdtemp`` makes it private)."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def save_pipeline(ema: UNet2DModel, out: Path, info: dict) -> None:
    """Write the EMA model as a DDPMPipeline folder plus ``training.json``, atomically.

    A model card (``README.md``) already in ``out`` is carried over into the new folder.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        DDPMPipeline(unet=ema, scheduler=make_scheduler()).save_pretrained(
            tmp, safe_serialization=True
        )
        (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        if (out / "README.md").is_file():  # the model card is written by hand: keep it
            shutil.copy2(out / "README.md", tmp / "README.md")
        _make_readable(tmp)
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_state(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    """Train, logging and checkpointing as the options say."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train_x, train_y = digits_split()[:2]
    alphas_cumprod = NoiseSchedule.linear(
        NUM_TRAIN_TIMESTEPS, BETA_START, BETA_END
    ).alphas_cumprod.float()
    model = make_unet(args.cond, args.norm_num_groups)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    batches = BatchSampler(train_x, args.batch_size, gen)
    step, seconds_before = 0, 0.0

    if args.state is not None and args.state.exists():
        st = torch.load(args.state, weights_only=False)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        batches._order = st["order"]
        step, seconds_before = st["step"], st["seconds"]
        print(f"resumed from {args.state} at step {step}", flush=True)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"UNet parameters: {n_params}; training {args.steps} steps", flush=True)
    command = shlex.join([sys.executable, *sys.argv])
    start, window, loss_value = time.perf_counter(), [], float("nan")
    if args.log is not None:
        args.log.parent.mkdir(parents=True, exist_ok=True)
    log = open(args.log, "a") if args.log is not None else None  # noqa: SIM115
    try:
        while step < args.steps:
            lr = learning_rate(step, args.steps, args.lr, args.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = batches.next_indices()
            labels = None
            if args.cond:  # label dropout to the null class: one model, cond. and uncond.
                drop = torch.rand(idx.numel(), generator=gen) < args.label_dropout
                labels = torch.where(drop, NULL_CLASS, train_y[idx])
            loss = diffusion_loss(model, train_x[idx], alphas_cumprod, gen, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            update_ema(ema, model, ema_decay(step, args.ema_decay))
            step += 1
            window.append(loss.item())

            seconds = seconds_before + time.perf_counter() - start
            if step % 100 == 0 or step == args.steps:
                loss_value = sum(window) / len(window)
                record = {"step": step, "loss": loss_value, "lr": lr, "seconds": seconds}
                print(json.dumps(record), flush=True)
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                window = []
            if step % args.save_every == 0 or step == args.steps:
                info = {"steps": step, "seconds": round(seconds, 1), "seed": args.seed,
                        "command": command, "final_loss": loss_value,
                        "batch_size": args.batch_size, "lr": args.lr,
                        "ema_decay": args.ema_decay, "parameters": n_params,
                        "class_conditional": args.cond,
                        "norm_num_groups": args.norm_num_groups,
                        "label_dropout": args.label_dropout if args.cond else None}
                save_pipeline(ema, args.out, info)
                if args.state is not None:
                    save_state(args.state, {
                        "model": model.state_dict(), "ema": ema.state_dict(),
                        "opt": opt.state_dict(), "gen": gen.get_state(),
                        "order": batches._order, "step": step, "seconds": seconds})
                print(f"saved {args.out} at step {step}", flush=True)
    finally:
        if log is not None:
            log.close()


if __name__ == "__main__":
    main()
