"""Real taming-format VQGAN files load through the ``default`` preset, safely and exactly.

The files are written here the way taming-transformers writes them (a Lightning dict whose
``state_dict`` carries the f16-16384 key names and shapes, random values and the training loss's
``loss.*`` entries, plus the model yaml), because no real checkpoint can be downloaded here.
"""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipelines import checkpoints, presets
from pipelines.downloads import ModelFileError
from pipelines.settings import ModelSettings
from pipelines.vqgan import VQGAN, VqganConfig
from pipelines.vqgan_loading import parse_taming_config

CPU = torch.device("cpu")

# configs/model.yaml of vqgan_imagenet_f16_16384, as heibox serves it (the data section trimmed).
F16_16384_YAML = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 256
    n_embed: 16384
    monitor: val/rec_loss
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult:
      - 1
      - 1
      - 2
      - 2
      - 4
      num_res_blocks: 2
      attn_resolutions:
      - 16
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_start: 0
        disc_weight: 0.75
        disc_num_layers: 2
        codebook_weight: 1.0
data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 3
    num_workers: 8
"""

FAKE_LIGHTNING = "faraday_test_fake_lightning_callbacks"

# Entries of the real vqgan_imagenet_f16_16384 last.ckpt state_dict, as taming's VQModel names
# them. Pinned here, not derived from our VQGAN, so a renamed attribute cannot pass unnoticed.
F16_16384_REAL_KEYS = {
    "encoder.conv_in.weight": (128, 3, 3, 3),
    "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
    "encoder.down.4.attn.1.q.weight": (512, 512, 1, 1),
    "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
    "encoder.conv_out.weight": (256, 512, 3, 3),
    "quant_conv.weight": (256, 256, 1, 1),
    "quantize.embedding.weight": (16384, 256),
    "post_quant_conv.weight": (256, 256, 1, 1),
    "decoder.conv_in.weight": (512, 256, 3, 3),
    "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
    "decoder.norm_out.weight": (128,),
    "decoder.conv_out.weight": (3, 128, 3, 3),
}


def yaml_for(config: VqganConfig) -> str:
    return yaml.safe_dump(
        {
            "model": {
                "base_learning_rate": 4.5e-06,
                "target": "taming.models.vqgan.VQModel",
                "params": {
                    "embed_dim": config.embed_dim,
                    "n_embed": config.n_embed,
                    "ddconfig": config.ddconfig,
                    "lossconfig": {
                        "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                        "params": {"disc_start": 0, "disc_weight": 0.75},
                    },
                },
            }
        }
    )


def random_vqgan(config: VqganConfig, seed: int) -> VQGAN:
    """Random values unlike any preset's, so a load that silently fell back to them would show."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VQGAN(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
    return model


def lightning_checkpoint(model: VQGAN, *, pickled_class: bool) -> dict[str, Any]:
    """The dict Lightning writes: weights under ``state_dict`` next to training state."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # A real checkpoint also holds the LPIPS + discriminator loss; it must never be loaded.
    state["loss.logvar"] = torch.zeros(())
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    state["loss.discriminator.main.0.bias"] = torch.randn(64)
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
    contents: dict[str, Any] = {
        "epoch": 12,
        "global_step": 345678,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": state,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0, 1]}]}],
        "lr_schedulers": [],
    }
    if pickled_class:
        contents["callbacks"] = {_fake_lightning_callback(): {"best_model_score": None}}
    return contents


def _fake_lightning_callback() -> type:
    """A class pickled by reference to a module that will not exist at load time.

    Real taming checkpoints key ``callbacks`` by Lightning's ``ModelCheckpoint`` class; a module
    that cannot be imported also shows that trusted loading copes without Lightning installed.
    """
    return type("ModelCheckpoint", (), {"__module__": FAKE_LIGHTNING})


def save_with_fake_module(contents: dict[str, Any], path: Path) -> None:
    callback_classes = [k for k in contents.get("callbacks", {}) if isinstance(k, type)]
    added = []
    for cls in callback_classes:
        module = types.ModuleType(cls.__module__)
        setattr(module, cls.__name__, cls)
        sys.modules[cls.__module__] = module
        added.append(cls.__module__)
    try:
        torch.save(contents, path)
    finally:
        for name in added:
            del sys.modules[name]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def default_settings(tmp: Path, config: Path, ckpt: Path, **overrides: Any) -> ModelSettings:
    values: dict[str, Any] = {
        "preset": "default",
        "cache_dir": tmp / "models",
        "vqgan_config": str(config),
        "vqgan_checkpoint": str(ckpt),
        **overrides,
    }
    return ModelSettings(**values)


@pytest.fixture(autouse=True)
def fresh_caches():
    presets.clear_caches()
    yield
    presets.clear_caches()


@pytest.fixture
def tiny_files(tmp_path: Path) -> tuple[VQGAN, Path, Path]:
    """A tiny VQGAN saved as a real-format Lightning checkpoint that weights_only refuses."""
    config = VqganConfig.tiny()
    model = random_vqgan(config, seed=1234)
    config_path = tmp_path / "model.yaml"
    config_path.write_text(yaml_for(config))
    ckpt = tmp_path / "last.ckpt"
    save_with_fake_module(lightning_checkpoint(model, pickled_class=True), ckpt)
    return model, config_path, ckpt


def assert_same_weights(loaded: VQGAN, source: VQGAN) -> None:
    expected = source.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


def test_f16_16384_lightning_checkpoint_round_trips_through_default_preset(tmp_path: Path):
    config = VqganConfig.f16_16384()
    source = random_vqgan(config, seed=4321)
    config_path = tmp_path / "model.yaml"
    config_path.write_text(F16_16384_YAML)
    ckpt = tmp_path / "last.ckpt"
    contents = lightning_checkpoint(source, pickled_class=True)
    assert len(contents["state_dict"]) == len(source.state_dict()) + 4
    written = {k: tuple(v.shape) for k, v in contents["state_dict"].items()}
    assert {k: written.get(k) for k in F16_16384_REAL_KEYS} == F16_16384_REAL_KEYS
    save_with_fake_module(contents, ckpt)
    del contents

    settings = default_settings(
        tmp_path, config_path, ckpt, vqgan_checkpoint_sha256=sha256_file(ckpt)
    )
    loaded = presets.load_vqgan(settings, CPU)

    assert loaded.config == config
    assert sum(p.numel() for p in loaded.parameters()) == 76_073_859
    assert not any(k.startswith("loss.") for k in loaded.state_dict())
    assert_same_weights(loaded, source)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())

    generator = torch.Generator().manual_seed(7)
    codes = torch.randint(0, config.n_embed, (1, 4, 4), generator=generator)
    with torch.no_grad():
        z_q = source.codebook[codes].permute(0, 3, 1, 2)
        assert torch.equal(loaded.decode(z_q), source.decode(z_q))


def test_yaml_parses_to_the_f16_16384_architecture(tmp_path: Path):
    path = tmp_path / "model.yaml"
    path.write_text(F16_16384_YAML)
    assert parse_taming_config(path) == VqganConfig.f16_16384()


def test_pickled_checkpoint_is_refused_without_trust(tiny_files, tmp_path: Path):
    _, config_path, ckpt = tiny_files
    settings = default_settings(tmp_path, config_path, ckpt)
    with pytest.raises(ModelFileError) as refused:
        presets.load_vqgan(settings, CPU)
    message = str(refused.value)
    assert "models.trust_checkpoints = true" in message
    assert "models.vqgan_checkpoint_sha256" in message
    assert "ModelCheckpoint" in message  # names what safe loading objected to
    assert not list((tmp_path / "models").glob("*.safetensors"))


def test_a_checkpoint_keyed_by_lightnings_own_callback_class_loads_safely(tmp_path: Path):
    """What heibox's taming checkpoints hold: ``callbacks`` keyed by Lightning's ModelCheckpoint
    class, pickled by name. Safe loading reads that name as a placeholder; no trust is needed."""
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint

    config = VqganConfig.tiny()
    model = random_vqgan(config, seed=4321)
    contents = lightning_checkpoint(model, pickled_class=False)
    contents["callbacks"] = {
        ModelCheckpoint: {"best_model_score": torch.tensor(0.25), "best_model_path": "logs/x.ckpt"}
    }
    ckpt = tmp_path / "last.ckpt"
    torch.save(contents, ckpt)
    config_path = tmp_path / "model.yaml"
    config_path.write_text(yaml_for(config))
    settings = default_settings(tmp_path, config_path, ckpt)  # neither pinned nor trusted
    assert_same_weights(presets.load_vqgan(settings, CPU), model)


def test_pickled_checkpoint_loads_with_trust(tiny_files, tmp_path: Path):
    model, config_path, ckpt = tiny_files
    settings = default_settings(tmp_path, config_path, ckpt, trust_checkpoints=True)
    assert_same_weights(presets.load_vqgan(settings, CPU), model)


def test_pickled_checkpoint_loads_with_matching_pin(tiny_files, tmp_path: Path):
    model, config_path, ckpt = tiny_files
    settings = default_settings(
        tmp_path, config_path, ckpt, vqgan_checkpoint_sha256=sha256_file(ckpt).upper()
    )
    assert_same_weights(presets.load_vqgan(settings, CPU), model)


def test_pickled_checkpoint_is_refused_with_wrong_pin(tiny_files, tmp_path: Path):
    _, config_path, ckpt = tiny_files
    settings = default_settings(tmp_path, config_path, ckpt, vqgan_checkpoint_sha256="0" * 64)
    with pytest.raises(ModelFileError, match="sha256"):
        presets.load_vqgan(settings, CPU)


def test_wrong_pin_is_refused_even_with_trust(tiny_files, tmp_path: Path):
    _, config_path, ckpt = tiny_files
    settings = default_settings(
        tmp_path, config_path, ckpt, vqgan_checkpoint_sha256="0" * 64, trust_checkpoints=True
    )
    with pytest.raises(ModelFileError, match="pins"):
        presets.load_vqgan(settings, CPU)


def test_plain_state_dict_loads_safely_without_trust(tmp_path: Path):
    config = VqganConfig.tiny()
    model = random_vqgan(config, seed=99)
    config_path = tmp_path / "model.yaml"
    config_path.write_text(yaml_for(config))
    ckpt = tmp_path / "weights.pt"
    torch.save(lightning_checkpoint(model, pickled_class=False)["state_dict"], ckpt)
    loaded = presets.load_vqgan(default_settings(tmp_path, config_path, ckpt), CPU)
    assert_same_weights(loaded, model)


def test_second_load_reads_the_safetensors_cache_without_unpickling(
    tiny_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    model, config_path, ckpt = tiny_files
    pin = sha256_file(ckpt)
    settings = default_settings(tmp_path, config_path, ckpt, vqgan_checkpoint_sha256=pin)
    presets.load_vqgan(settings, CPU)
    cached = list((tmp_path / "models").glob("*.weights.safetensors"))
    assert len(cached) == 1

    presets.clear_caches()
    ckpt.write_bytes(b"not a checkpoint any more")

    def no_unpickling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.load was called although the safetensors cache is valid")

    monkeypatch.setattr(torch, "load", no_unpickling)
    assert_same_weights(presets.load_vqgan(settings, CPU), model)


def test_a_cache_whose_body_is_cut_off_is_rebuilt_from_the_checkpoint(
    tiny_files, tmp_path: Path
):
    model, config_path, ckpt = tiny_files
    settings = default_settings(tmp_path, config_path, ckpt, trust_checkpoints=True)
    presets.load_vqgan(settings, CPU)
    (cached,) = (tmp_path / "models").glob("*.weights.safetensors")
    whole = cached.read_bytes()
    cached.write_bytes(whole[: len(whole) // 2])  # the header reads; half the tensors are gone

    presets.clear_caches()
    assert_same_weights(presets.load_vqgan(settings, CPU), model)
    rebuilt = load_file(str(cached))
    assert len(cached.read_bytes()) == len(whole)
    assert set(rebuilt) == set(model.state_dict())


def test_changed_local_checkpoint_invalidates_the_cache(tiny_files, tmp_path: Path):
    first, config_path, ckpt = tiny_files
    settings = default_settings(tmp_path, config_path, ckpt, trust_checkpoints=True)
    assert_same_weights(presets.load_vqgan(settings, CPU), first)

    presets.clear_caches()
    second = random_vqgan(VqganConfig.tiny(), seed=555)
    torch.save(second.state_dict(), ckpt)
    loaded = presets.load_vqgan(settings, CPU)
    assert_same_weights(loaded, second)


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path: Path):
    config_path = tmp_path / "model.yaml"
    config_path.write_text(yaml_for(VqganConfig.tiny()))
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelFileError, match="not a readable PyTorch checkpoint"):
        presets.load_vqgan(default_settings(tmp_path, config_path, ckpt), CPU)
    ckpt.write_bytes(b"garbage, not even a zip")
    with pytest.raises(ModelFileError, match="not a PyTorch checkpoint"):
        presets.load_vqgan(default_settings(tmp_path, config_path, ckpt), CPU)


def test_checkpoint_that_does_not_fit_the_config_names_the_mismatch(tiny_files, tmp_path: Path):
    _, _, ckpt = tiny_files
    other = VqganConfig(ddconfig={**VqganConfig.tiny().ddconfig, "ch": 64}, n_embed=64, embed_dim=8)
    config_path = tmp_path / "other.yaml"
    config_path.write_text(yaml_for(other))
    settings = default_settings(tmp_path, config_path, ckpt, trust_checkpoints=True)
    with pytest.raises(ModelFileError, match="does not fit") as refused:
        presets.load_vqgan(settings, CPU)
    assert "wrong shape" in str(refused.value)


def test_missing_local_files_are_named(tmp_path: Path):
    settings = default_settings(tmp_path, tmp_path / "nope.yaml", tmp_path / "nope.ckpt")
    with pytest.raises(ModelFileError, match=r"models\.vqgan_config: local file .*nope\.yaml"):
        presets.load_vqgan(settings, CPU)
    config_path = tmp_path / "model.yaml"
    config_path.write_text(yaml_for(VqganConfig.tiny()))
    settings = default_settings(tmp_path, config_path, tmp_path / "nope.ckpt")
    with pytest.raises(ModelFileError, match=r"models\.vqgan_checkpoint: local file"):
        presets.load_vqgan(settings, CPU)


def test_extract_state_dict_drops_the_loss_and_refuses_other_things(tmp_path: Path):
    weights = {"encoder.w": torch.ones(1), "loss.logvar": torch.zeros(())}
    kept = checkpoints.extract_state_dict({"state_dict": weights}, what="x", path=tmp_path)
    assert list(kept) == ["encoder.w"]
    with pytest.raises(ModelFileError, match="holds no state dict"):
        checkpoints.extract_state_dict([1, 2], what="x", path=tmp_path)
    with pytest.raises(ModelFileError, match="is a str"):
        checkpoints.extract_state_dict({"epoch": "three"}, what="x", path=tmp_path)


# --- yaml validation -------------------------------------------------------------------------

HTML_PAGE = """<!DOCTYPE html>
<html><head><title>Link does not exist :-(</title></head>
<body><h2>Link does not exist :-(</h2></body></html>
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HTML_PAGE, "HTML page"),
        ("model: [unclosed\n  params: {", "not valid YAML"),
        ("just a sentence, not a config\n", "no 'model' section"),
        ("model:\n  target: taming.models.vqgan.VQModel\n", "no model.params"),
        (
            "model:\n  params:\n    n_embed: 16384\n    embed_dim: 256\n",
            "missing model.params.ddconfig",
        ),
        (
            "model:\n  params:\n    ddconfig: {ch: 128}\n",
            "missing model.params.n_embed, model.params.embed_dim",
        ),
        (
            "model:\n  params:\n    n_embed: 8\n    embed_dim: 4\n    ddconfig: {ch: 128}\n",
            "missing model.params.ddconfig.out_ch",
        ),
        (
            "model:\n  target: taming.models.vqgan.GumbelVQ\n  params: {}\n",
            "Gumbel VQGAN .* not supported yet",
        ),
        (
            "model:\n  target: taming.models.cond_transformer.Net2NetTransformer\n  params: {}\n",
            "only taming.models.vqgan.VQModel",
        ),
    ],
)
def test_bad_yaml_is_refused_clearly(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    with pytest.raises(ModelFileError, match=expected) as refused:
        parse_taming_config(path)
    assert "models.vqgan_config" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_binary_file_is_not_a_yaml(tmp_path: Path):
    path = tmp_path / "model.yaml"
    path.write_bytes(b"\x80\x02\xff\xfe\x00garbage")
    with pytest.raises(ModelFileError, match="not"):
        parse_taming_config(path)


def test_non_integer_codebook_size_is_refused(tmp_path: Path):
    data = yaml.safe_load(F16_16384_YAML)
    data["model"]["params"]["n_embed"] = "many"
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelFileError, match="n_embed must be a positive integer"):
        parse_taming_config(path)


def test_read_checkpoint_checks_the_pin_itself_when_the_caller_has_not(tiny_files):
    model, _, ckpt = tiny_files
    common = {"what": "ckpt", "sha256_key": "models.vqgan_checkpoint_sha256"}
    contents = checkpoints.read_checkpoint(ckpt, pinned_sha256=sha256_file(ckpt), **common)
    assert torch.equal(contents["state_dict"]["quant_conv.weight"], model.quant_conv.weight)
    with pytest.raises(ModelFileError, match="differs from the pinned"):
        checkpoints.read_checkpoint(ckpt, pinned_sha256="f" * 64, **common)
