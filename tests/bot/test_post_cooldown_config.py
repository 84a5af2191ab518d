"""``[discord] post_cooldown_seconds``: read, defaulted and validated like every knob."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, parse_config


def test_the_post_cooldown_is_read_and_defaults_to_ten_seconds() -> None:
    assert parse_config("").discord.post_cooldown_seconds == 10.0
    config = parse_config("[discord]\npost_cooldown_seconds = 2.5")
    assert config.discord.post_cooldown_seconds == 2.5


@pytest.mark.parametrize("value", ["-1", "7200", "'soon'"])
def test_a_bad_post_cooldown_is_one_line_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[discord]\npost_cooldown_seconds = {value}")
    [problem] = caught.value.problems
    assert problem.startswith("discord.post_cooldown_seconds = "), problem
    assert "must be a number from 0" in problem, problem
