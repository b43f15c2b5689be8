"""The embedded ``digits`` model: a small DDPM trained on scikit-learn's digits.

The weights ship with the package (``weights/digits_unet.safetensors``, about
2.5 MB); ``python tools/train_digits.py`` (in the repository) reproduces them.
"""

from __future__ import annotations

from pathlib import Path

import torch

WEIGHTS_PATH = Path(__file__).with_name("weights") / "digits_unet.safetensors"
IMAGE_SIZE = 16

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(24, 48, 48),
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)

TRAIN_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
)


def load_digit_images() -> torch.Tensor:
    """scikit-learn's 1797 digits as a float32 tensor (n, 1, 16, 16) in [-1, 1]."""
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 16.0
    up = torch.nn.functional.interpolate(raw, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return (up.clamp(0, 1) * 2 - 1).contiguous()


class DigitsModel:
    """The embedded digits DDPM: 16x16 grey images, epsilon prediction, DDIM grid.

    The grid uses diffusers' ``DDIMScheduler`` with the training schedule,
    ``leading`` timestep spacing (diffusers' default; N = 50 starts at t = 980)
    and ``set_alpha_to_one``. Not ``trailing``: the cosine schedule leaves
    ``alpha(999) = 5e-5``, and DDIM's ``x0 = (x - sigma eps) / alpha`` there
    multiplies the network's eps error by 2e4, which wrecks the samples.
    """

    name = "digits"
    latent_shape = (1, IMAGE_SIZE, IMAGE_SIZE)

    def __init__(self, weights: Path | str = WEIGHTS_PATH, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        from diffusers import UNet2DModel
        from safetensors.torch import load_file

        from hasten.errors import HastenError

        path = Path(weights)
        if not path.is_file():
            raise HastenError(
                f"digits weights not found at {path}; reproduce them with `python tools/train_digits.py` from the repository"
            )
        self.unet = UNet2DModel(**UNET_CONFIG)
        self.unet.load_state_dict(load_file(str(path)))
        # torch's own .to: diffusers' override warns about float32 modules this network does not have
        torch.nn.Module.to(self.unet, device, dtype).eval().requires_grad_(False)
        self.device = torch.device(device)

    @property
    def network(self):
        """The denoising network (for ``torch.compile``)."""
        return self.unet

    def grid(self, steps: int):
        from diffusers import DDIMScheduler

        from hasten.grid import Grid

        scheduler = DDIMScheduler(**TRAIN_SCHEDULER_CONFIG, timestep_spacing="leading", set_alpha_to_one=True, clip_sample=False)
        return Grid.from_scheduler(scheduler, steps)

    def denoiser(self, grid):
        from hasten.denoise import TimestepDenoiser

        return TimestepDenoiser(self.unet, grid)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float().clamp(-1, 1) + 1) / 2).cpu()
