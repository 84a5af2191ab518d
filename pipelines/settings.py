"""Which models the pipelines use and where they come from.

One frozen dataclass that both the command line and the bot build from the ``[models]`` table of
``config.toml``; its defaults are the documented defaults there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

PRESETS = ("tiny", "random-full", "default")

# Crowson's notebook and most forks default to the ImageNet f16 16384-code VQGAN.
VQGAN_F16_16384_CONFIG_URL = (
    "https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/files/?p=%2Fconfigs%2Fmodel.yaml&dl=1"
)
VQGAN_F16_16384_CHECKPOINT_URL = (
    "https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/files/?p=%2Fckpts%2Flast.ckpt&dl=1"
)
# Real-ESRGAN x4plus, as released by its authors (a plain state dict under "params_ema").
REAL_ESRGAN_X4PLUS_URL = (
    "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
)


# Keys that take one source or a list of sources tried in order (all checked against one sha256).
SOURCE_LIST_KEYS = ("vqgan_config", "vqgan_checkpoint")


def sources_of(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """The sources a ``vqgan_config``/``vqgan_checkpoint`` value names, in the order to try."""
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class ModelSettings:
    preset: str = "default"
    device: str = "auto"
    # One worker slot per entry, each with its own models on its own device; empty = (device,).
    devices: tuple[str, ...] = ()
    dtype: str = "auto"
    cache_dir: Path = Path("data/models")
    # VQGAN-CLIP's guide.
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    # A local path or an http(s) URL, or several tried in order; URLs are downloaded into
    # cache_dir.
    vqgan_config: str | tuple[str, ...] = VQGAN_F16_16384_CONFIG_URL
    vqgan_config_sha256: str = ""
    vqgan_checkpoint: str | tuple[str, ...] = VQGAN_F16_16384_CHECKPOINT_URL
    vqgan_checkpoint_sha256: str = ""
    # Full unpickling of a checkpoint that weights_only loading rejects is allowed only when its
    # sha256 is pinned above or the owner sets this.
    trust_checkpoints: bool = False
    # Blended Latent Diffusion: a diffusers model id or a local folder.
    diffusion_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    # BLD's ranker (paper section 4.4 uses ViT-B/16).
    ranker_clip_model: str = "ViT-B-16"
    ranker_clip_pretrained: str = "openai"
    # Throughput and reproducibility (config.toml explains each; precision.py decides dtypes).
    deterministic: bool = False
    # "auto" or a whole number: how many /imagine candidates are forwarded together.
    candidate_batch: int | str = "auto"
    # "auto" or true/false: channels-last memory format for the image decoders.
    channels_last: bool | str = "auto"
    # torch.compile the image decoders.
    compile: bool = False
    # The upscaler: an ESRGAN-family .pth/.safetensors file spandrel can load, a path or a URL.
    upscaler_model: str = REAL_ESRGAN_X4PLUS_URL
    upscaler_model_sha256: str = ""
    # The image safety check's weights: a hub id or a local folder in the released layout.
    safety_checker: str = "CompVis/stable-diffusion-safety-checker"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every reason these settings are unusable, one human-readable line each."""
        out: list[str] = []
        if self.preset not in PRESETS:
            out.append(f"models.preset = {self.preset!r}: must be one of {', '.join(PRESETS)}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            out.append(f"models.dtype = {self.dtype!r}: must be auto, float32, float16 or bfloat16")
        batch = self.candidate_batch
        if batch != "auto" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            out.append(
                f'models.candidate_batch = {batch!r}: must be "auto" or a whole number of at '
                "least 1"
            )
        for key in SOURCE_LIST_KEYS:
            value = getattr(self, key)
            if isinstance(value, tuple) and (not value or not all(
                isinstance(v, str) and v for v in value
            )):
                out.append(f"models.{key}: a list of sources must hold at least one non-empty "
                           "path or URL")
        if self.channels_last != "auto" and not isinstance(self.channels_last, bool):
            out.append(
                f'models.channels_last = {self.channels_last!r}: must be "auto", true or false'
            )
        # A TOML string such as "false" is truthy: taken as given it would switch the option on.
        for key in ("compile", "deterministic", "trust_checkpoints"):
            if not isinstance(getattr(self, key), bool):
                out.append(f"models.{key} = {getattr(self, key)!r}: must be true or false")
        if not _device_ok(self.device):
            out.append(f"models.device = {self.device!r}: must be auto, cpu, cuda or cuda:N")
        bad = [d for d in self.devices if not isinstance(d, str) or not _device_ok(d)]
        if bad:
            out.append(f"models.devices = {list(self.devices)!r}: every entry must be auto, cpu, "
                       "cuda or cuda:N")
        return out

    @property
    def device_list(self) -> tuple[str, ...]:
        """The devices that get a worker slot each."""
        return self.devices or (self.device,)

    @classmethod
    def from_mapping(cls, table: dict[str, Any]) -> ModelSettings:
        """Build from a TOML table; unknown keys are an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"unknown key(s) in [models]: {', '.join(unknown)}")
        values = dict(table)
        if "devices" in values:
            values["devices"] = tuple(values["devices"])
        if "cache_dir" in values:
            values["cache_dir"] = Path(values["cache_dir"])
        for key in SOURCE_LIST_KEYS:
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


def _device_ok(device: str) -> bool:
    return device in ("auto", "cpu") or device.startswith("cuda")
