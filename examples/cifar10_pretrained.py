"""DDIM on Google's pretrained CIFAR10 DDPM (`google/ddpm-cifar10-32`, from the Hugging Face
hub). Needs network access the first time (then it is read from the local cache); offline it
stops with a message saying how to download the checkpoint first.

Note: the published checkpoint holds non-EMA weights, so its samples score FID ≈ 12.4 with
1000-step DDPM instead of the paper's 3.17: the paper's CIFAR10 table cannot be matched with it.

    python examples/cifar10_pretrained.py [--steps 50] [--num 16] [--device cuda]
"""

import argparse
import sys

import torch

import ddim

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--num", type=int, default=16)
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()

try:
    model = ddim.load_pretrained("google/ddpm-cifar10-32", device=args.device)
except ddim.PretrainedError as err:
    sys.exit(f"cannot run this example offline: {err}")

print(f"loaded {model.name}: sample shape {model.sample_shape}, {model.schedule}")
gens = [torch.Generator().manual_seed(i) for i in range(args.num)]
images = ddim.sample(model, steps=args.steps, eta=0.0, batch_size=args.num, generator=gens,
                     progress=True)
ddim.save_image_grid(images, "cifar10_ddim.png", scale=2)
print("wrote cifar10_ddim.png")
