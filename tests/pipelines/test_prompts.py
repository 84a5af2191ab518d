"""The prompt syntax ``text[:weight[:stop]]`` separated by ``|``, and every error it reports."""

from __future__ import annotations

import pytest

from pipelines.interface import InvalidRequest
from pipelines.prompts import (
    Prompt,
    describe_prompts,
    parse_prompts,
    read_prompts,
    token_count,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a castle", [Prompt("a castle")]),
        (
            "a castle on a hill | oil painting:0.5 | blurry:-1",
            [Prompt("a castle on a hill"), Prompt("oil painting", 0.5), Prompt("blurry", -1.0)],
        ),
        ("cat:2:0.3", [Prompt("cat", 2.0, 0.3)]),
        ("cat:1:2", [Prompt("cat", 1.0, 2.0)]),
        ("cat:1:2:3", [Prompt("cat:1:2:3")]),
        ("  a cat  :  2  :  0.3  |  dog ", [Prompt("a cat", 2.0, 0.3), Prompt("dog")]),
        ("cat:1e-2|dog", [Prompt("cat", 0.01), Prompt("dog")]),
        ("cat:.5", [Prompt("cat", 0.5)]),
        ("cat:+3", [Prompt("cat", 3.0)]),
        ("cat:-1e6", [Prompt("cat", -1e6)]),
        ("photo from 1999:0.5", [Prompt("photo from 1999", 0.5)]),
        ("a  castle\tnear  water", [Prompt("a  castle\tnear  water")]),
    ],
)
def test_weights_and_stops(text: str, expected: list[Prompt]) -> None:
    assert parse_prompts(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A clock time is text, not a weight of 30.
        ("a clock showing 12:30", [Prompt("a clock showing 12:30")]),
        ("a clock showing 12:30pm", [Prompt("a clock showing 12:30pm")]),
        ("a clock showing 12:30:2.0", [Prompt("a clock showing 12:30", 2.0)]),
        ("a clock showing 12:30:45", [Prompt("a clock showing 12:30:45")]),
        ("a clock showing 12:30:2.0:1.5", [Prompt("a clock showing 12:30", 2.0, 1.5)]),
        ("a photo 16:9 | sky:0.5", [Prompt("a photo 16:9"), Prompt("sky", 0.5)]),
        ("https://example.com/cat.png", [Prompt("https://example.com/cat.png")]),
        ("see http://example.com:8080", [Prompt("see http://example.com:8080")]),
        ("http://example.com:8080:0.5", [Prompt("http://example.com:8080", 0.5)]),
        ("Star Trek:TNG", [Prompt("Star Trek:TNG")]),
        ("cat:heavy", [Prompt("cat:heavy")]),
        ("a sign saying: hello", [Prompt("a sign saying: hello")]),
        ("re:invent conference:2", [Prompt("re:invent conference", 2.0)]),
    ],
)
def test_colons_inside_the_text_are_text(text: str, expected: list[Prompt]) -> None:
    assert parse_prompts(text) == expected


def test_negative_weights_are_kept() -> None:
    prompts = parse_prompts("a forest:2 | blurry:-1 | text:-0.5:1.5")
    assert [p.weight for p in prompts] == [2.0, -1.0, -0.5]
    assert prompts[2].stop == 1.5


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["empty"]),
        ("   ", ["empty"]),
        ("a || b", ["prompt 2 of 3", "empty"]),
        ("a | b |", ["prompt 3 of 3", "empty"]),
        ("| a", ["prompt 1 of 2", "empty"]),
        ("cat:0.5x", ["weight", "not a number", "'0.5x'"]),
        ("a | cat:1,5", ["prompt 2 of 2", "weight", "'1,5'"]),
        ("cat:-", ["weight", "'-'"]),
        ("cat:0.5:fast", ["stop", "not a number", "'fast'"]),
        ("cat:0.5:1x", ["stop", "'1x'"]),
        ("cat:", ["ends with ':'", "\\:"]),
        (":0.5", ["no text"]),
        (":1:2", ["no text"]),
        ("cat:1e400", ["weight", "too large", "'1e400'"]),
        ("a | cat:-2e6", ["prompt 2 of 2", "weight", "too large", "'-2e6'"]),
        ("cat:1:1e400", ["stop", "too large", "'1e400'"]),
        # Text alone cannot tell that every weight is 0 (an image prompt may guide): the
        # request checks that; the text's own fault is a weight too small.
        ("a:0", ["the prompt", "'a'", "too small"]),
        ("a:0 | b:-0.0", ["prompt 1 of 2", "'a'", "too small"]),
        ("a castle | blurry:1e-7", ["prompt 2 of 2", "'blurry'", "too small", "1e-07"]),
        ("a castle:0 | blurry:-1", ["prompt 1 of 2", "'a castle'", "too small"]),
    ],
)
def test_errors_say_what_and_where(text: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_prompts(text)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "text",
    ["a red apple | blurry:-1", "a:1 | b:-1", "a:2 | b:-0.5 | c:-1.5", "cat:1e-6 | dog:-1e-6"],
)
def test_weights_that_sum_to_zero_are_a_valid_objective(text: str) -> None:
    prompts = parse_prompts(text)
    assert sum(p.weight for p in prompts) == pytest.approx(0.0)


def test_the_too_small_message_does_not_speak_of_a_sum() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_prompts("a red apple:2 | blurry:0")
    assert "sum" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The escape is what makes this "year 1999:2" at weight 0.5 on purpose.
        ("year 1999\\:2:0.5", [Prompt("year 1999:2", 0.5)]),
        ("year 1999\\:2", [Prompt("year 1999:2")]),
        # Without it, a decimal weight is read as a weight even after a digit.
        ("year 1999:2.0:0.5", [Prompt("year 1999", 2.0, 0.5)]),
        # The escape changes only the colon it marks; "9:2" is still a ratio by the colon rule.
        ("ratio 16\\:9:2 | sky", [Prompt("ratio 16:9:2"), Prompt("sky")]),
        ("ratio 16\\:9:2.0 | sky", [Prompt("ratio 16:9", 2.0), Prompt("sky")]),
        ("cat\\:0.5x", [Prompt("cat:0.5x")]),
        ("cat\\:", [Prompt("cat:")]),
        ("cat\\: dog", [Prompt("cat: dog")]),
        ("a\\:b:2", [Prompt("a:b", 2.0)]),
        ("a\\:1\\:2", [Prompt("a:1:2")]),
        ("back\\slash:2", [Prompt("back\\slash", 2.0)]),
    ],
)
def test_a_backslash_colon_is_a_literal_colon(text: str, expected: list[Prompt]) -> None:
    assert parse_prompts(text) == expected


def test_a_mistyped_weight_points_to_the_escape() -> None:
    with pytest.raises(InvalidRequest, match=r"\\:"):
        parse_prompts("cat:0.5x")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a red apple | blurry:-1", "a red apple (1) · blurry (\u22121)"),
        ("year 1999:2:0.5", "year 1999:2 (0.5)"),
        ("cat:2:0.3", "cat (2, stop 0.3)"),
        ("year 1999\\:2:0.5 | x:-0.25:1", "year 1999:2 (0.5) · x (\u22120.25, stop 1)"),
    ],
)
def test_the_reading_is_shown_compactly(text: str, shown: str) -> None:
    assert describe_prompts(parse_prompts(text)) == shown


def test_reading_the_syntax_needs_no_tokenizer() -> None:
    # The publisher reads prompts on the event loop; only parse_prompts counts tokens.
    long_text = "word " * 100
    assert read_prompts(long_text)[0].text == long_text.strip()


def test_a_prompt_over_clips_context_is_refused_with_the_limit() -> None:
    long_text = "word " * 80
    with pytest.raises(InvalidRequest) as caught:
        parse_prompts(f"a cat | {long_text}")
    message = str(caught.value)
    assert "prompt 2 of 2" in message
    assert "77" in message
    assert f"{token_count(long_text.strip())} tokens" in message


def test_context_limit_is_exact() -> None:
    # 75 single-token words + start + end = 77 tokens: allowed; one more is not.
    fits = " ".join(["cat"] * 75)
    assert token_count(fits) == 77
    assert parse_prompts(fits)[0].text == fits
    with pytest.raises(InvalidRequest, match="78 tokens"):
        parse_prompts(fits + " cat")
    with pytest.raises(InvalidRequest, match="limit is 10"):
        parse_prompts("a b c d e f g h i", context_length=10)


def test_prompt_round_trips_through_its_string_form() -> None:
    prompts = parse_prompts("a castle | oil painting:0.5 | blurry:-1:2")
    assert " | ".join(str(p) for p in prompts) == "a castle | oil painting:0.5 | blurry:-1:2"
    assert parse_prompts(" | ".join(str(p) for p in prompts)) == prompts
    tricky = [Prompt("year 1999:2", 0.5), Prompt("12:30"), Prompt("cat:0.5x", -1.0, 2.0)]
    assert parse_prompts(" | ".join(str(p) for p in tricky)) == tricky
