"""The VQGAN autoencoder, composed from taming-transformers' modules.

``taming.models.vqgan`` pulls in Lightning and the training loss (which downloads VGG weights), so
this composes the same submodules under the same attribute names instead. A real taming
checkpoint's ``state_dict`` (minus its ``loss.*`` entries) loads into it with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn


@dataclass(frozen=True)
class VqganConfig:
    """The ``model.params`` of a taming yaml: ``ddconfig``, ``n_embed`` and ``embed_dim``."""

    ddconfig: dict[str, Any] = field(default_factory=dict)
    n_embed: int = 16384
    embed_dim: int = 256

    @classmethod
    def f16_16384(cls) -> VqganConfig:
        """vqgan_imagenet_f16_16384, the usual VQGAN-CLIP default (76,073,859 parameters)."""
        return cls(
            ddconfig={
                "double_z": False,
                "z_channels": 256,
                "resolution": 256,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 128,
                "ch_mult": [1, 1, 2, 2, 4],
                "num_res_blocks": 2,
                "attn_resolutions": [16],
                "dropout": 0.0,
            },
            n_embed=16384,
            embed_dim=256,
        )

    @classmethod
    def tiny(cls) -> VqganConfig:
        """The same architecture at toy size, for tests and offline demos.

        Taming's GroupNorm has 32 groups, so widths stay multiples of 32.
        """
        return cls(
            ddconfig={
                "double_z": False,
                "z_channels": 8,
                "resolution": 64,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 32,
                "ch_mult": [1, 1, 2],
                "num_res_blocks": 1,
                "attn_resolutions": [16],
                "dropout": 0.0,
            },
            n_embed=64,
            embed_dim=8,
        )


class VQGAN(nn.Module):
    """Encoder → quant_conv → quantize → post_quant_conv → Decoder, images in [-1, 1]."""

    def __init__(self, config: VqganConfig) -> None:
        super().__init__()
        self.config = config
        dd = config.ddconfig
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quantize = VectorQuantizer2(config.n_embed, config.embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(dd["z_channels"], config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, dd["z_channels"], 1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.ddconfig["ch_mult"]) - 1)

    @property
    def codebook(self) -> torch.Tensor:
        """(n_embed, embed_dim)."""
        return self.quantize.embedding.weight

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous latent (before quantisation) of images in [-1, 1]."""
        return self.quant_conv(self.encoder(images))

    def quantize_straight_through(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codes in the forward pass; the gradient flows to the continuous ``z``."""
        z_q, _, _ = self.quantize(z)
        return z_q

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Images in roughly [-1, 1] from quantised latents."""
        return self.decoder(self.post_quant_conv(z_q))
