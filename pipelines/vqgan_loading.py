"""A real VQGAN from a taming-transformers yaml and checkpoint.

The yaml's ``model.params`` says the architecture (``ddconfig``, ``n_embed``, ``embed_dim``); the
checkpoint's ``state_dict`` fills it, with ``strict=True`` so a config and a checkpoint that do not
belong together fail loudly instead of producing noise.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from pipelines.checkpoints import load_weights
from pipelines.downloads import ModelFileError, check_not_html, fetch_first
from pipelines.settings import ModelSettings, sources_of
from pipelines.vqgan import VQGAN, VqganConfig

log = logging.getLogger(__name__)

CONFIG_KEY = "models.vqgan_config"
CHECKPOINT_KEY = "models.vqgan_checkpoint"

# What taming's Encoder and Decoder cannot be built without.
_REQUIRED_DDCONFIG = (
    "ch",
    "out_ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "in_channels",
    "resolution",
    "z_channels",
)


def parse_taming_config(
    path: Path, *, what: str = CONFIG_KEY, name: str | None = None
) -> VqganConfig:
    """The architecture a taming ``VQModel`` yaml describes.

    ``name`` is how messages call the file (a download's URL rather than its temporary file).
    """
    shown = name or str(path)
    check_not_html(path, what, shown)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelFileError(f"{what}: {shown} is not a text file, so not a taming yaml") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise ModelFileError(f"{what}: {shown} is not valid YAML ({problem}{where})") from None

    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise ModelFileError(f"{what}: {shown} is not a taming config (it has no 'model' section)")
    target = str(model.get("target", ""))
    if target.endswith("GumbelVQ"):
        raise ModelFileError(
            f"{what}: {shown} is a Gumbel VQGAN ({target}), which is not supported yet; "
            "use a taming.models.vqgan.VQModel checkpoint such as vqgan_imagenet_f16_16384"
        )
    if target and not target.endswith("VQModel"):
        raise ModelFileError(
            f"{what}: {shown} describes {target}; only taming.models.vqgan.VQModel is supported"
        )
    params = model.get("params")
    if not isinstance(params, dict):
        raise ModelFileError(f"{what}: {shown} has no model.params section")
    missing = [k for k in ("ddconfig", "n_embed", "embed_dim") if k not in params]
    if missing:
        names = ", ".join(f"model.params.{k}" for k in missing)
        raise ModelFileError(f"{what}: {shown} is missing {names}")
    ddconfig = params["ddconfig"]
    if not isinstance(ddconfig, dict):
        raise ModelFileError(f"{what}: {shown}: model.params.ddconfig must be a mapping")
    missing = [k for k in _REQUIRED_DDCONFIG if k not in ddconfig]
    if missing:
        names = ", ".join(f"model.params.ddconfig.{k}" for k in missing)
        raise ModelFileError(f"{what}: {shown} is missing {names}")
    if params.get("remap") or params.get("colorize_nlabels"):
        raise ModelFileError(
            f"{what}: {shown} uses remap/colorize_nlabels (a segmentation-conditioned model); "
            "only image VQGANs are supported"
        )
    for key in ("n_embed", "embed_dim"):
        if not isinstance(params[key], int) or params[key] <= 0:
            raise ModelFileError(
                f"{what}: {shown}: model.params.{key} must be a positive integer, "
                f"not {params[key]!r}"
            )
    return VqganConfig(
        ddconfig=dict(ddconfig), n_embed=int(params["n_embed"]), embed_dim=int(params["embed_dim"])
    )


def _mismatch_message(expected: dict[str, torch.Size], weights: dict[str, torch.Tensor]) -> str:
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(weights) if tuple(expected[k]) != tuple(weights[k].shape)
    )
    parts = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", wrong_shape),
    ):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)


def build_vqgan(config: VqganConfig, weights: dict[str, torch.Tensor], *, what: str) -> VQGAN:
    """A VQGAN of ``config`` holding exactly ``weights`` (strict)."""
    # Built on the meta device: random initialisation of 76M parameters is pure waste when
    # every one of them is about to be replaced.
    with torch.device("meta"):
        model = VQGAN(config)
    expected: dict[str, Any] = {k: v.shape for k, v in model.state_dict().items()}
    problem = _mismatch_message(expected, weights)
    if problem:
        raise ModelFileError(
            f"{what} does not fit the architecture in {CONFIG_KEY} ({problem}); "
            "the config and the checkpoint must come from the same model"
        )
    model.load_state_dict(weights, strict=True, assign=True)
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:  # a tensor the state dict does not carry: a bug, not a user error
        raise RuntimeError(f"VQGAN tensors not restored from the checkpoint: {left_on_meta}")
    return model


def load_vqgan_from_settings(settings: ModelSettings, *, progress: bool = True) -> VQGAN:
    """The VQGAN the ``default`` preset names, fetched and validated; on the CPU."""
    config_path, _ = fetch_first(
        sources_of(settings.vqgan_config),
        settings.cache_dir,
        what=CONFIG_KEY,
        sha256=settings.vqgan_config_sha256,
        progress=progress,
        check=lambda path, name: parse_taming_config(path, name=name),
    )
    config = parse_taming_config(config_path)
    weights = load_weights(
        settings.vqgan_checkpoint,
        cache_dir=settings.cache_dir,
        what=CHECKPOINT_KEY,
        sha256_key="models.vqgan_checkpoint_sha256",
        pinned_sha256=settings.vqgan_checkpoint_sha256,
        trust=settings.trust_checkpoints,
        progress=progress,
    )
    log.info(
        "%s: %d tensors for a VQGAN with %d codes", CHECKPOINT_KEY, len(weights), config.n_embed
    )
    return build_vqgan(config, weights, what=CHECKPOINT_KEY)
