"""The slash commands take their bounds and choices from config, and fit Discord's limits."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from bot.config import Config, config_from_mapping, pipeline_hard_limits
from cogs.admin import AdminCog
from cogs.edit import build_edit_command
from cogs.imagine import build_imagine_command, closest_size, parse_size
from cogs.queue import QueueCog
from pipelines.interface import InvalidRequest

NARROW = {
    "imagine": {
        "sizes": ["64x64", "128x64", "64x128"],
        "default_size": "64x64",
        "max_prompt_chars": 120,
        "steps": {"default": 3, "min": 2, "max": 7},
        "cutn": {"default": 2, "min": 1, "max": 6},
        "image_prompt_weight": {"default": 0.5, "min": -1.0, "max": 1.5},
    },
    "edit": {
        "backgrounds": ["none", "paste"],
        "steps": {"default": 4, "min": 3, "max": 9},
        "candidates": {"default": 2, "min": 1, "max": 3},
        "blend_start": {"default": 0.2, "min": 0.1, "max": 0.5},
        "guidance": {"default": 5.0, "min": 2.0, "max": 9.0},
    },
}


def options_of(command: app_commands.Command, config: Config) -> dict[str, dict[str, Any]]:
    client = discord.Client(intents=discord.Intents.none())
    tree = app_commands.CommandTree(client)
    payload = command.to_dict(tree)
    assert len(payload["description"]) <= 100
    return {option["name"]: option for option in payload["options"]}


def test_imagine_sizes_come_from_config_and_settable_bounds_from_the_pipeline() -> None:
    config = config_from_mapping(NARROW)
    options = options_of(build_imagine_command(SimpleNamespace(), config.imagine), config)
    assert list(options) == [
        "prompt", "seed", "steps", "size", "cutn", "init_image", "mask", "mask_text",
        "image_prompt", "image_prompt_weight",
    ]
    assert options["prompt"]["required"] and options["prompt"]["max_length"] == 120
    # /settings may widen steps and cutn up to the pipeline's limits after registration, so
    # Discord is given those limits; config's bounds are checked by the bot (check_within).
    imagine_limits, _ = pipeline_hard_limits()
    assert (options["steps"]["min_value"], options["steps"]["max_value"]) == imagine_limits["steps"]
    assert (options["cutn"]["min_value"], options["cutn"]["max_value"]) == imagine_limits["cutn"]
    assert "default 3" in options["steps"]["description"]
    assert "7" not in options["steps"]["description"]  # config's max would mislead
    weight = options["image_prompt_weight"]
    assert weight["type"] == discord.AppCommandOptionType.number.value
    assert (weight["min_value"], weight["max_value"]) == (-1.0, 1.5)
    assert [c["value"] for c in options["size"]["choices"]] == ["64x64", "128x64", "64x128"]
    assert options["init_image"]["type"] == discord.AppCommandOptionType.attachment.value
    assert not any(options[name].get("required") for name in list(options)[1:])



def test_edit_backgrounds_come_from_config_and_settable_bounds_from_the_pipeline() -> None:
    config = config_from_mapping(NARROW)
    options = options_of(build_edit_command(SimpleNamespace(), config.edit), config)
    assert [name for name, o in options.items() if o.get("required")] == [
        "image", "mask", "prompt"
    ]
    _, edit_limits = pipeline_hard_limits()
    for name in ("steps", "candidates", "blend_start", "guidance"):
        option = options[name]
        assert (option["min_value"], option["max_value"]) == edit_limits[name], name
    assert "default 0.2" in options["blend_start"]["description"]
    assert "0.5" not in options["blend_start"]["description"]
    assert [c["value"] for c in options["background"]["choices"]] == ["none", "paste"]
    assert options["shrink"]["type"] == discord.AppCommandOptionType.boolean.value


def test_every_option_has_a_real_description_within_discords_limit() -> None:
    config = Config()
    fake_bot = SimpleNamespace(config=config)
    built = [
        build_imagine_command(SimpleNamespace(), config.imagine),
        build_edit_command(SimpleNamespace(), config.edit),
        *QueueCog(fake_bot).__cog_app_commands__,  # type: ignore[arg-type]
        *AdminCog(fake_bot).__cog_app_commands__,  # type: ignore[arg-type]
    ]
    for command in built:
        for name, option in options_of(command, config).items():
            assert option["description"] not in ("…", "-", ""), (command.name, name)
            assert len(option["description"]) <= 100, (command.name, name)
            for choice in option.get("choices", []):
                assert len(choice["name"]) <= 100


def test_owner_command_is_hidden_from_non_admins_by_default() -> None:
    cog = AdminCog(SimpleNamespace(config=Config()))  # type: ignore[arg-type]
    (resync,) = cog.__cog_app_commands__
    assert resync.default_permissions == discord.Permissions(administrator=True)
    assert isinstance(cog, commands.Cog)


def test_init_image_picks_the_closest_configured_shape() -> None:
    from PIL import Image

    sizes = ((64, 64), (128, 64), (64, 128))
    assert closest_size(sizes, Image.new("RGB", (300, 160))) == (128, 64)
    assert closest_size(sizes, Image.new("RGB", (90, 200))) == (64, 128)
    assert closest_size(sizes, Image.new("RGB", (50, 52))) == (64, 64)


def test_only_configured_sizes_are_accepted() -> None:
    sizes = ((64, 64), (128, 64))
    assert parse_size("128x64", sizes) == (128, 64)
    with pytest.raises(InvalidRequest, match="size must be one of 64x64, 128x64"):
        parse_size("4096x4096", sizes)


def test_admin_commands_are_hidden_from_members_without_manage_server() -> None:
    from cogs.history import HistoryCog
    from cogs.moderation import ModerationCog
    from cogs.settings import SettingsCog

    fake_bot: Any = SimpleNamespace(config=Config())
    commands_by_name = {
        command.name: command
        for cog in (ModerationCog(fake_bot), SettingsCog(fake_bot), HistoryCog(fake_bot))
        for command in cog.__cog_app_commands__
    }
    manage = discord.Permissions(manage_guild=True)
    for name in ("settings", "block", "unblock", "pause", "resume", "purge", "stats"):
        assert commands_by_name[name].default_permissions == manage, name
    # Everyone's commands stay visible to everyone.
    assert commands_by_name["history"].default_permissions is None
