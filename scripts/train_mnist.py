"""Train the bundled 28×28 MNIST DDPM from scratch (ε-prediction, T=1000, linear β).

The model is a diffusers ``UNet2DModel`` trained on the 4000 training digits of
:func:`ddim.evaluation.mnist.mnist_split`, with an EMA of its weights: unconditional (``--uncond``,
the bundled ``mnist``) or class-conditional (labels 0-9 and the null class 10, label dropout for
classifier-free guidance: the bundled ``mnist-cond``). ``--init-from FOLDER`` starts the model
and its EMA from a saved DDPMPipeline folder; a class-conditional folder can start an
unconditional run, its null class folded into the time embedding (the same network, see
:func:`fold_null_class`). Every ``--save-every`` steps and at
the end the EMA weights are written (atomically) as a diffusers ``DDPMPipeline`` folder plus a
``training.json`` describing the run, and the resume state (model, EMA, optimizer, RNG, data
order, step) is saved; a run that is killed resumes from ``--state`` when started again with
the same command.

Uses ``--threads`` CPU threads (default 1). Example::

    nohup python scripts/train_mnist.py --steps 4000 --out src/ddim/weights/mnist \\
        --log runs/train_mnist.jsonl --state runs/train_mnist_state.pt > runs/train_mnist.out &

The optimisation helpers (schedule of the learning rate and EMA decay, batches, atomic saves)
are those of ``scripts/train_digits.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel
from train_digits import (
    BETA_END,
    BETA_START,
    NULL_CLASS,
    NUM_TRAIN_TIMESTEPS,
    BatchSampler,
    diffusion_loss,
    ema_decay,
    learning_rate,
    save_pipeline,
    save_state,
    update_ema,
)

from ddim import NoiseSchedule
from ddim.evaluation.mnist import mnist_split

ARCHITECTURES = {
    # name: (block_out_channels, layers_per_block); three levels at 28, 14 and 7 pixels,
    # self-attention only in the middle block (7×7)
    "small": ((24, 48, 96), 1),
    "base": ((32, 64, 128), 1),
}
HELDOUT_EVAL = 256  # held-out digits for the logged EMA loss (fixed t and ε)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps in total")
    p.add_argument("--out", type=Path, default=Path("src/ddim/weights/mnist"),
                   help="DDPMPipeline folder to write (replaced atomically)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", type=Path, default=None,
                   help="JSONL file: mean loss per --log-every steps, held-out EMA loss")
    p.add_argument("--state", type=Path, default=None,
                   help="resume file (model, EMA, optimizer, RNG); resumes if it exists")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default="small")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--uncond", action="store_true",
                   help="an unconditional model (no class embedding, no labels)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="DDPMPipeline folder whose UNet starts the model and its EMA")
    p.add_argument("--label-dropout", type=float, default=0.2,
                   help="probability of replacing a label by the null class 10")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=500,
                   help="steps between held-out EMA losses in the log")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p.parse_args(argv)


def make_unet(arch: str = "small", cond: bool = True) -> UNet2DModel:
    """A UNet for 1×28×28 digits; ``cond``: class embedding for labels 0..9 and null 10."""
    channels, layers = ARCHITECTURES[arch]
    return UNet2DModel(
        num_class_embeds=NULL_CLASS + 1 if cond else None,
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        norm_num_groups=8,
    )


@torch.no_grad()
def fold_null_class(cond_state: dict) -> dict:
    """An unconditional UNet's state dict equal to a conditional one at the null class.

    diffusers' ``UNet2DModel`` adds the class embedding to the output of
    ``time_embedding.linear_2``; adding the null class's row to that layer's bias gives the
    same network without the class embedding, exactly.
    """
    state = {k: v.clone() for k, v in cond_state.items() if not k.startswith("class_embedding")}
    state["time_embedding.linear_2.bias"] += cond_state["class_embedding.weight"][NULL_CLASS]
    return state


def initial_state(folder: Path, cond: bool) -> dict:
    """The UNet weights of a DDPMPipeline folder, folded to unconditional where asked."""
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet")
    state = unet.state_dict()
    has_classes = unet.config.num_class_embeds is not None
    if has_classes and not cond:
        return fold_null_class(state)
    if cond and not has_classes:
        raise SystemExit(f"--init-from {folder}: an unconditional UNet cannot start a "
                         "class-conditional run")
    return state


@torch.no_grad()
def heldout_loss(ema: UNet2DModel, x0: torch.Tensor, y: torch.Tensor,
                 alphas_cumprod: torch.Tensor) -> float:
    """ε-MSE of the EMA model on fixed held-out digits, fixed t and ε (null label for 1/5)."""
    gen = torch.Generator().manual_seed(12345)
    if ema.config.num_class_embeds is None:
        return diffusion_loss(ema, x0, alphas_cumprod, gen).item()
    labels = torch.where(torch.arange(y.numel()) % 5 == 0, NULL_CLASS, y)
    return diffusion_loss(ema, x0, alphas_cumprod, gen, labels).item()


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=disable, mininterval=10.0,
                unit="step", dynamic_ncols=True)


def main(argv: list[str] | None = None) -> None:
    """Train, logging and checkpointing as the options say."""
    args = parse_args(argv)
    if not 0.0 <= args.label_dropout < 1.0:
        raise SystemExit(f"--label-dropout must lie in [0, 1), got {args.label_dropout}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train_x, train_y, held_x, held_y = mnist_split()
    held_x, held_y = held_x[:HELDOUT_EVAL], held_y[:HELDOUT_EVAL]
    alphas_cumprod = NoiseSchedule.linear(
        NUM_TRAIN_TIMESTEPS, BETA_START, BETA_END
    ).alphas_cumprod.float()
    model = make_unet(args.arch, cond=not args.uncond)
    if args.init_from is not None:
        model.load_state_dict(initial_state(args.init_from, cond=not args.uncond))
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
        torch.set_rng_state(st["torch_rng"])
        batches._order = st["order"]
        step, seconds_before = st["step"], st["seconds"]
        print(f"resumed from {args.state} at step {step}", flush=True)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"UNet ({args.arch}) parameters: {n_params}; training {args.steps} steps",
          flush=True)
    command = shlex.join([sys.executable, *sys.argv])
    start, window, loss_value, held_value = time.perf_counter(), [], float("nan"), None
    if args.log is not None:
        args.log.parent.mkdir(parents=True, exist_ok=True)
    log = open(args.log, "a") if args.log is not None else None  # noqa: SIM115
    bar = _progress(args.steps, step, args.no_progress)
    try:
        while step < args.steps:
            lr = learning_rate(step, args.steps, args.lr, args.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = batches.next_indices()
            labels = None
            if not args.uncond:
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
            bar.update(1)

            seconds = seconds_before + time.perf_counter() - start
            if step % args.log_every == 0 or step == args.steps:
                loss_value = sum(window) / len(window)
                record = {"step": step, "loss": loss_value, "lr": lr, "seconds": seconds}
                if step % args.eval_every == 0 or step == args.steps:
                    held_value = heldout_loss(ema, held_x, held_y, alphas_cumprod)
                    record["heldout_ema_loss"] = held_value
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                window = []
            if step % args.save_every == 0 or step == args.steps:
                info = {"steps": step, "seconds": round(seconds, 1), "seed": args.seed,
                        "command": command, "final_loss": loss_value,
                        "heldout_ema_loss": held_value, "arch": args.arch,
                        "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
                        "ema_decay": args.ema_decay, "parameters": n_params,
                        "class_conditional": not args.uncond,
                        "label_dropout": None if args.uncond else args.label_dropout,
                        "init_from": None if args.init_from is None else str(args.init_from),
                        "threads": torch.get_num_threads(), "finished": step == args.steps}
                save_pipeline(ema, args.out, info)
                if args.state is not None:
                    save_state(args.state, {
                        "model": model.state_dict(), "ema": ema.state_dict(),
                        "opt": opt.state_dict(), "gen": gen.get_state(),
                        "torch_rng": torch.get_rng_state(), "order": batches._order,
                        "step": step, "seconds": seconds})
                bar.write(f"saved {args.out} at step {step} ({seconds:.0f} s)")
    finally:
        bar.close()
        if log is not None:
            log.close()


if __name__ == "__main__":
    main()
