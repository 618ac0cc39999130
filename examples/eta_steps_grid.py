"""The same latents decoded with S ∈ {5, 10, 20, 50} and η ∈ {0, 0.5, 1}: one row per
(S, η), one column per latent. With η = 0 the rows for different S show the same digits (the
paper's consistency property); with η > 0 the fresh noise changes them, more so at small S.

    python examples/eta_steps_grid.py        # writes eta_steps_grid.png
"""

import torch

import ddim

model = ddim.load_pretrained("digits")
n = 8
x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
rows = []
for steps in (5, 10, 20, 50):
    for eta in (0.0, 0.5, 1.0):
        gens = [torch.Generator().manual_seed(100 + i) for i in range(n)]
        rows.append(ddim.sample(model, steps, eta, x_T=x_T, generator=gens))
        print(f"S={steps:2d} eta={eta}: row {len(rows)}")
ddim.save_image_grid(torch.cat(rows), "eta_steps_grid.png", nrow=n, scale=4)
print("wrote eta_steps_grid.png (rows: S=5,10,20,50, each with eta=0, 0.5, 1)")
