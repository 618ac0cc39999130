"""Classifier-free guidance with the bundled class-conditional model: one row per guidance
weight w (0 = unconditional, 1 = conditional, more = sharper), digits 0-9 in the columns.

    python examples/guidance.py              # writes guidance.png
"""

import torch

import ddim

model = ddim.load_pretrained("digits-cond")
labels = torch.arange(10)
rows = []
for w in (0.0, 1.0, 2.0, 4.0):
    gens = [torch.Generator().manual_seed(i) for i in range(10)]  # same noise in every row
    rows.append(ddim.sample(model, steps=50, class_labels=labels, guidance_scale=w,
                            batch_size=10, generator=gens))
ddim.save_image_grid(torch.cat(rows), "guidance.png", nrow=10, scale=4)
print("wrote guidance.png (rows: w = 0, 1, 2, 4)")
