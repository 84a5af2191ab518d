r"""The weighted multi-prompt syntax: ``text[:weight[:stop]]``, prompts separated by ``|``.

Example: ``a castle on a hill | oil painting:0.5 | blurry:-1``.

How a prompt is read, right to left:

- Trailing ``:weight:stop`` or ``:weight`` fields are taken off the end. A number is a plain
  decimal with an optional sign and exponent (``2``, ``-1``, ``0.5``, ``.5``, ``1e-2``).
  Whitespace around the colon and the number is ignored.
- A colon inside the text is left alone, so ``a clock showing 12:30`` is one prompt of weight 1.
  Precisely: a weight that is an unsigned whole number and whose colon directly follows a digit
  (``12:30``, ``16:9``, ``12:30:45``) or ends a URL (``http://host:8080``) is part of the text.
  To weight such a prompt, write the weight with a decimal point or sign:
  ``a clock showing 12:30:2.0``. A stop after a real weight is always a stop: ``cat:1:2``.
- A trailing ``:something`` that starts like a number but is not one (``cat:0.5x``, ``cat:1,5``,
  ``cat:-``) is an error, because it can only be a mistyped weight. Anything else after a colon
  is text: ``cat:heavy``, ``Star Trek:TNG`` and ``a sign saying: hello`` are prompts of weight 1.
  A prompt ending in a bare ``:`` is an error (a weight was started and not given).
- ``\:`` is always a literal colon and never starts a weight: ``year 1999\:2:0.5`` is the text
  "year 1999:2" with weight 0.5, and ``cat\:0.5x`` is the text "cat:0.5x". No other backslash is
  special.
- ``stop`` is a squared spherical distance (0 to π²/2 ≈ 4.93): a prompt with a positive weight
  stops pulling once the image is that close; one with a negative weight stops pushing once the
  image is that far away.
- Weights may have any sign and may sum to zero (``a red apple | blurry:-1`` is the usual
  negative prompt): the loss is Σ wₚ·dₚ and ranking divides by Σ|wₚ|. What is refused is a
  weight whose magnitude is below MIN_ABS_WEIGHT (0 included), because such a prompt would only
  cost time.

Because the rules above are invisible in the text, :func:`describe_prompts` writes back how a
prompt was read (``a red apple (1) · blurry (−1)``); the bot and the command line show it.

Errors are :class:`~pipelines.interface.InvalidRequest` messages naming what is wrong and where
(1-based prompt position and the offending text): empty prompts, weights that are not numbers,
weights beyond ±MAX_ABS_WEIGHT (or a stop that overflows), weights too small to matter, and
prompts longer than CLIP's context. Nothing here needs a model, so the bot can validate a command
before queueing it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.interface import InvalidRequest

if TYPE_CHECKING:
    from open_clip.tokenizer import SimpleTokenizer

CLIP_CONTEXT_LENGTH = 77
SEPARATOR = "|"
# Weights only matter relative to each other and to the regularisers. Beyond this one prompt
# drowns every other term of the float32 loss, and near 1e38 the loss overflows to inf, which
# turns the whole image into NaN.
MAX_ABS_WEIGHT = 1e6
# Below this a prompt changes nothing a float32 loss can register next to a weight-1 prompt, so
# it is far more likely a typo (``cat:0`` for ``cat:0.5``) than an intention.
MIN_ABS_WEIGHT = 1e-6
ESCAPED_COLON = "\\:"
# Stands in for an escaped colon while the weight fields are read: a private-use character no
# keyboard types, so it cannot collide with the user's own text.
_LITERAL_COLON = "\ue000"
# How a weight and a stop are shown: a true minus sign reads better than a hyphen.
_MINUS = "\u2212"
SHOWN_SEPARATOR = " · "

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TRAILING_NUMBER = re.compile(rf"\s*:\s*({_NUMBER})\s*$")
_TRAILING_WEIGHT_AND_STOP = re.compile(rf"(.*?)\s*:\s*({_NUMBER})\s*:\s*({_NUMBER})\s*$", re.DOTALL)
_UNSIGNED_INTEGER = re.compile(r"\d+")
# What a mistyped weight starts with: a digit, a sign or a decimal point.
_NUMBER_LIKE = re.compile(r"[-+.\d]")


@dataclass(frozen=True)
class Prompt:
    text: str
    weight: float = 1.0
    stop: float | None = None

    def __str__(self) -> str:
        # Colons are escaped so the string always parses back to this prompt.
        out = self.text.replace(":", ESCAPED_COLON)
        if self.weight != 1.0 or self.stop is not None:
            out += f":{self.weight:g}"
        if self.stop is not None:
            out += f":{self.stop:g}"
        return out


@functools.lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    # open_clip ships the BPE vocabulary in its wheel, so this works offline. Imported here so
    # that reading a prompt's syntax (the publisher does, on the event loop) loads no torch.
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def token_count(text: str) -> int:
    """CLIP tokens the text needs, counting the start and end tokens."""
    return len(_tokenizer().encode(text)) + 2


def parse_prompts(text: str, context_length: int = CLIP_CONTEXT_LENGTH) -> list[Prompt]:
    """Parse ``text`` into prompts, or raise InvalidRequest saying what is wrong and where."""
    prompts = read_prompts(text)
    count = len(prompts)
    for index, prompt in enumerate(prompts, start=1):
        tokens = token_count(prompt.text)
        if tokens > context_length:
            raise InvalidRequest(
                f"{_where(index, count)} is too long for CLIP: {tokens} tokens, the limit is "
                f"{context_length} including start and end ({_quote(prompt.text)})"
            )
    return prompts


def read_prompts(text: str) -> list[Prompt]:
    """The syntax alone: :func:`parse_prompts` without CLIP's length check, needing no model or
    tokenizer, so it is cheap enough to call anywhere (the publisher, on the event loop)."""
    if not text or not text.strip():
        raise InvalidRequest("the prompt is empty: write what the image should show")
    pieces = text.split(SEPARATOR)
    count = len(pieces)
    prompts = [_parse_one(piece, index, count) for index, piece in enumerate(pieces, start=1)]
    # Magnitudes only: whether every weight is 0 depends on the image prompts too, which only
    # the request knows (ImagineRequest.validate calls check_weights with both).
    check_magnitudes(
        [(_where(i, count), p.text, p.weight) for i, p in enumerate(prompts, start=1)]
    )
    return prompts


def check_weights(weighted: Iterable[tuple[str, str, float]]) -> None:
    """Refuse weights that cannot guide: all zero, or any one too small to matter.

    ``weighted`` holds (where, text, weight) for every prompt of a request, text and image ones
    alike (text may be empty). Weights may sum to zero: only their magnitudes are checked.
    """
    entries = list(weighted)
    if entries and all(weight == 0 for _, _, weight in entries):
        raise InvalidRequest(
            "every prompt weight is 0, so nothing would guide the image; "
            "give at least one prompt a weight"
        )
    check_magnitudes(entries)


def check_magnitudes(weighted: Iterable[tuple[str, str, float]]) -> None:
    """Refuse the first weight too small to matter, naming its prompt."""
    for where, text, weight in weighted:
        if abs(weight) < MIN_ABS_WEIGHT:
            shown = f" ({_quote(text)})" if text else ""
            raise InvalidRequest(
                f"{where}{shown} has a weight that is too small: {weight:g}; "
                f"use a magnitude of at least {MIN_ABS_WEIGHT:g}, or leave the prompt out"
            )


def format_number(value: float) -> str:
    """``1``, ``0.5``, ``−1``: compact, with a true minus sign."""
    text = f"{value:g}"
    return _MINUS + text[1:] if text.startswith("-") else text


def describe_prompt(text: str, weight: float, stop: float | None = None) -> str:
    """One prompt as it was read: ``blurry (−1)``, ``year 1999:2 (0.5, stop 2)``."""
    numbers = format_number(weight)
    if stop is not None:
        numbers += f", stop {format_number(stop)}"
    return f"{text} ({numbers})"


def describe_prompts(prompts: Iterable[Prompt]) -> str:
    """How prompts were read, compactly: ``a red apple (1) · blurry (−1)``."""
    return SHOWN_SEPARATOR.join(describe_prompt(p.text, p.weight, p.stop) for p in prompts)


def image_prompt_label(index: int) -> str:
    return f"image prompt {index}"


def describe_image_prompts(weights: list[float], stops: list[float | None]) -> list[str]:
    """``image prompt 1 (0.5)`` for each image prompt, as :func:`describe_prompts` does."""
    return [
        describe_prompt(image_prompt_label(index), weight, stop)
        for index, (weight, stop) in enumerate(zip(weights, stops, strict=True), start=1)
    ]


def _parse_one(piece: str, index: int, count: int) -> Prompt:
    where = _where(index, count)
    body = piece.strip().replace(ESCAPED_COLON, _LITERAL_COLON)
    if not body:
        if count == 1:
            raise InvalidRequest("the prompt is empty: write what the image should show")
        raise InvalidRequest(
            f"{where} is empty: remove the extra '{SEPARATOR}' or write a prompt there"
        )
    if body.endswith(":"):
        raise InvalidRequest(
            f"{where} ends with ':' but no weight follows it ({_quote(piece.strip())}); "
            "write a number after the colon, remove it, or write \\: for a literal colon"
        )
    numbers: list[str] = []
    both = _TRAILING_WEIGHT_AND_STOP.match(body)
    if both and not _is_part_of_text(both.group(1), both.group(2)):
        numbers = [both.group(2), both.group(3)]
        body = both.group(1).rstrip()
    else:
        one = _TRAILING_NUMBER.search(body)
        if one and not _is_part_of_text(body[: one.start()], one.group(1)):
            numbers = [one.group(1)]
            body = body[: one.start()].rstrip()
    _refuse_mistyped_number(body, numbers, where)
    text = body.strip().replace(_LITERAL_COLON, ":")
    if not text:
        raise InvalidRequest(f"{where} has a weight but no text ({_quote(piece.strip())})")
    values = [float(number) for number in numbers]
    if values and (not math.isfinite(values[0]) or abs(values[0]) > MAX_ABS_WEIGHT):
        raise InvalidRequest(
            f"{where} has a weight that is too large: {_quote(numbers[0])} in "
            f"{_quote(piece.strip())}; use a number between -{MAX_ABS_WEIGHT:,.0f} and "
            f"{MAX_ABS_WEIGHT:,.0f}"
        )
    if len(values) == 2 and not math.isfinite(values[1]):
        raise InvalidRequest(
            f"{where} has a stop that is too large: {_quote(numbers[1])} in "
            f"{_quote(piece.strip())}; a stop is a distance from 0 to about 4.93"
        )
    return Prompt(text, *values)


def _is_part_of_text(head: str, number: str) -> bool:
    """True when ``head:number`` reads as a time, ratio or port rather than a weight."""
    if not _UNSIGNED_INTEGER.fullmatch(number):
        return False
    if head[-1:].isdigit():
        return True
    last_word = head.split()[-1] if head.split() else ""
    return "://" in last_word


def _refuse_mistyped_number(body: str, numbers: list[str], where: str) -> None:
    """Raise when what follows the last colon can only be a weight (or stop) typed wrong."""
    head, colon, tail = body.rpartition(":")
    if not colon or not head.strip():
        return
    tail = tail.rstrip()
    if not tail or tail != tail.lstrip() or any(c.isspace() for c in tail):
        return
    if _is_part_of_text(head, tail):
        return
    weight_before = _TRAILING_NUMBER.search(head)
    after_weight = weight_before is not None and not _is_part_of_text(
        head[: weight_before.start()], weight_before.group(1)
    )
    number_like = _NUMBER_LIKE.match(tail) is not None and (after_weight or not head[-1:].isdigit())
    if number_like or (after_weight and not numbers):
        field_name = "stop" if after_weight else "weight"
        raise InvalidRequest(
            f"{where} has a {field_name} that is not a number: {_quote(tail)} in "
            f"{_quote(body.replace(_LITERAL_COLON, ':'))}; use a plain number like 0.5 or -1, "
            "or write \\: for a colon that belongs to the text"
        )


def _where(index: int, count: int) -> str:
    return "the prompt" if count == 1 else f"prompt {index} of {count}"


def _quote(text: str, limit: int = 60) -> str:
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"'{text}'"
