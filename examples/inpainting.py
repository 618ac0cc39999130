"""Complete the right half of held-out digits (known pixels are kept exactly), and edit
digits with image-to-image at two strengths.
Needs the eval extra (scikit-learn, for the held-out digits): pip install 'ddim[eval]'.

    python examples/inpainting.py            # writes inpainting.png
"""

import torch

import ddim
from ddim.evaluation.digits import digits_split

model = ddim.load_pretrained("digits")
x0 = digits_split()[2][:8]
mask = torch.zeros(1, 1, 8, 8)
mask[..., :4] = 1  # 1 = known (the left half), 0 = generate
gens = lambda: [torch.Generator().manual_seed(i) for i in range(8)]  # noqa: E731
filled = ddim.inpaint(model, x0, mask, steps=50, generator=gens())
assert torch.equal(filled[..., :4], x0[..., :4])
light = ddim.img2img(model, x0, strength=0.3, steps=50, generator=gens())
heavy = ddim.img2img(model, x0, strength=0.7, steps=50, generator=gens())
blanked = x0 * mask - (1 - mask)
ddim.save_image_grid(torch.cat([x0, blanked, filled, light, heavy]), "inpainting.png", nrow=8,
                     scale=4)
print("wrote inpainting.png (rows: input, masked, inpainted, img2img 0.3, img2img 0.7)")
