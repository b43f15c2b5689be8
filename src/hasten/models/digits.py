"""The embedded ``digits`` models: small DDPMs trained on scikit-learn's digits.

``digits`` is unconditional; ``digits-cond`` is class-conditional with
classifier-free guidance (its prompt is a digit, or empty for unconditional).
The weights ship with the package (``weights/digits_unet.safetensors`` and
``weights/digits_cond_unet.safetensors``, about 2.5 MB each);
``python tools/train_digits.py [--conditional]`` (in the repository) reproduces them.
"""

from __future__ import annotations

from pathlib import Path

import torch

WEIGHTS_PATH = Path(__file__).with_name("weights") / "digits_unet.safetensors"
COND_WEIGHTS_PATH = Path(__file__).with_name("weights") / "digits_cond_unet.safetensors"
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

#: the conditional network: the same UNet with a class embedding; class 10 is "no digit" (classifier-free guidance)
NULL_CLASS = 10
COND_UNET_CONFIG = dict(UNET_CONFIG, num_class_embeds=NULL_CLASS + 1)

TRAIN_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
)


def load_digit_images() -> torch.Tensor:
    """scikit-learn's 1797 digits as a float32 tensor (n, 1, 16, 16) in [-1, 1]."""
    return load_digits_with_labels()[0]


def load_digits_with_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 digits (n, 1, 16, 16) in [-1, 1] and their labels (n,) in 0..9."""
    from sklearn.datasets import load_digits

    data = load_digits()
    raw = torch.from_numpy(data.images).float().unsqueeze(1) / 16.0
    up = torch.nn.functional.interpolate(raw, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return (up.clamp(0, 1) * 2 - 1).contiguous(), torch.from_numpy(data.target).long()


def _load_unet(config: dict, path: Path, device, dtype, train_flag: str):
    """A UNet2DModel of ``config`` with the weights at ``path``, on ``device`` in ``dtype``, for inference."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from hasten.errors import HastenError

    if not path.is_file():
        raise HastenError(f"digits weights not found at {path}; reproduce them with "
                          f"`python tools/train_digits.py{train_flag}` from the repository")
    unet = UNet2DModel(**config)
    unet.load_state_dict(load_file(str(path)))
    # torch's own .to: diffusers' override warns about float32 modules this network does not have
    torch.nn.Module.to(unet, device, dtype).eval().requires_grad_(False)
    return unet


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
        self.unet = _load_unet(UNET_CONFIG, Path(weights), device, dtype, "")
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
