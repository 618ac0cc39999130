"""Encode held-out digits to DDIM latents and decode them again: plain DDIM inversion
against implicit (fixed-point) inversion, at 10 steps.
Needs the eval extra (scikit-learn, for the held-out digits): pip install 'ddim[eval]'.

    python examples/inversion.py             # writes inversion.png (rows: input, plain, implicit)
"""

import torch

import ddim
from ddim.evaluation.digits import digits_split

model = ddim.load_pretrained("digits")
x0 = digits_split()[2][:8]  # 8 digits the model never saw
rows = [x0]
for method in ("ddim", "fixed_point"):
    x_T = ddim.invert(model, x0, steps=10, method=method)
    back = ddim.sample(model, steps=10, x_T=x_T)
    rows.append(back)
    print(f"{method:12s}: reconstruction MSE {(back - x0).square().mean():.2e}")
ddim.save_image_grid(torch.cat(rows), "inversion.png", nrow=8, scale=4)
print("wrote inversion.png")
