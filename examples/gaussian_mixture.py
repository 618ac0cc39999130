"""DDIM with the exact ε of a Gaussian mixture: what the sampler does when the model is
perfect. Prints how sample statistics approach the truth as S grows, for η = 0 and η = 1,
and how well a deterministic (η = 0) inversion reconstructs.

    python examples/gaussian_mixture.py
"""

import torch

import ddim
from ddim.testing import GaussianMixture

schedule = ddim.NoiseSchedule.linear()
data = GaussianMixture(means=torch.tensor([[-2.0], [1.5]]), stds=torch.tensor([[0.5], [0.3]]),
                       weights=[0.3, 0.7])
model = data.model(schedule)  # ε*(x_t, t) = -sqrt(1-ᾱ_t) ∇log q(x_t), in closed form
print(f"truth: mean {data.mean.item():.3f}, variance {data.variance.item():.3f}, "
      f"weight of the right mode 0.700")
for eta in (0.0, 1.0):
    for steps in (5, 10, 50, 200):
        x = ddim.sample(model, steps, eta, shape=(20_000, 1), dtype=torch.float64,
                        spacing="trailing", generator=torch.Generator().manual_seed(0))
        right = (data.log_responsibilities(x, torch.tensor(1.0)).argmax(1) == 1).double()
        print(f"eta={eta} S={steps:3d}: mean {x.mean():.3f}, variance {x.var():.3f}, "
              f"weight {right.mean():.3f}")

x0 = data.sample(1000, torch.Generator().manual_seed(1))
for steps in (10, 50):
    for method in ("ddim", "fixed_point"):
        x_T = ddim.invert(model, x0, steps, method=method)
        error = (ddim.sample(model, steps, x_T=x_T) - x0).square().mean()
        print(f"invert -> sample, S={steps}, {method}: reconstruction MSE {error:.2e}")
