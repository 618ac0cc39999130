"""Sample digits from the bundled pretrained DDPM with DDIM and save a grid.

    python examples/quickstart.py            # writes quickstart.png
"""

import torch

import ddim

model = ddim.load_pretrained("digits")  # bundled with the package: no download
generators = [torch.Generator().manual_seed(i) for i in range(64)]  # one per image
images = ddim.sample(model, steps=50, eta=0.0, batch_size=64, generator=generators)
ddim.save_image_grid(images, "quickstart.png", nrow=8, scale=4)
print(f"wrote quickstart.png: {tuple(images.shape)}, values in "
      f"[{images.min():.2f}, {images.max():.2f}]")
