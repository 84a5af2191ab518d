"""The weighted multi-prompt syntax: ``text[:weight[:stop]]``, prompts separated by ``|``.

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
- ``stop`` is a squared spherical distance (0 to π²/2 ≈ 4.93): a prompt with a positive weight
  stops pulling once the image is that close; one with a negative weight stops pushing once the
  image is that far away.

Errors are :class:`~pipelines.interface.InvalidRequest` messages naming what is wrong and where
(1-based prompt position and the offending text): empty prompts, weights that are not numbers,
weights beyond ±MAX_ABS_WEIGHT (or a stop that overflows), weights that sum to zero, and prompts
longer than CLIP's context. Nothing here needs a model, so the bot can validate a command before
queueing it.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from open_clip.tokenizer import SimpleTokenizer

from pipelines.interface import InvalidRequest

CLIP_CONTEXT_LENGTH = 77
SEPARATOR = "|"
# Weights only matter relative to each other and to the regularisers. Beyond this one prompt
# drowns every other term of the float32 loss, and near 1e38 the loss overflows to inf, which
# turns the whole image into NaN.
MAX_ABS_WEIGHT = 1e6

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TRAILING_NUMBER = re.compile(rf"\s*:\s*({_NUMBER})\s*$")
_TRAILING_WEIGHT_AND_STOP = re.compile(
    rf"(.*?)\s*:\s*({_NUMBER})\s*:\s*({_NUMBER})\s*$", re.DOTALL
)
_UNSIGNED_INTEGER = re.compile(r"\d+")
# What a mistyped weight starts with: a digit, a sign or a decimal point.
_NUMBER_LIKE = re.compile(r"[-+.\d]")


@dataclass(frozen=True)
class Prompt:
    text: str
    weight: float = 1.0
    stop: float | None = None

    def __str__(self) -> str:
        out = self.text
        if self.weight != 1.0 or self.stop is not None:
            out += f":{self.weight:g}"
        if self.stop is not None:
            out += f":{self.stop:g}"
        return out


@functools.lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    # open_clip ships the BPE vocabulary in its wheel, so this works offline.
    return SimpleTokenizer()


def token_count(text: str) -> int:
    """CLIP tokens the text needs, counting the start and end tokens."""
    return len(_tokenizer().encode(text)) + 2


def parse_prompts(text: str, context_length: int = CLIP_CONTEXT_LENGTH) -> list[Prompt]:
    """Parse ``text`` into prompts, or raise InvalidRequest saying what is wrong and where."""
    if not text or not text.strip():
        raise InvalidRequest("the prompt is empty: write what the image should show")
    pieces = text.split(SEPARATOR)
    count = len(pieces)
    prompts = [_parse_one(piece, index, count) for index, piece in enumerate(pieces, start=1)]
    if abs(sum(p.weight for p in prompts)) < 1e-9:
        weights = ", ".join(f"{p.weight:g}" for p in prompts)
        raise InvalidRequest(
            f"the prompt weights ({weights}) sum to zero, so nothing would guide the image; "
            "give at least one prompt more weight"
        )
    for index, prompt in enumerate(prompts, start=1):
        tokens = token_count(prompt.text)
        if tokens > context_length:
            raise InvalidRequest(
                f"{_where(index, count)} is too long for CLIP: {tokens} tokens, the limit is "
                f"{context_length} including start and end ({_quote(prompt.text)})"
            )
    return prompts


def _parse_one(piece: str, index: int, count: int) -> Prompt:
    where = _where(index, count)
    body = piece.strip()
    if not body:
        if count == 1:
            raise InvalidRequest("the prompt is empty: write what the image should show")
        raise InvalidRequest(
            f"{where} is empty: remove the extra '{SEPARATOR}' or write a prompt there"
        )
    if body.endswith(":"):
        raise InvalidRequest(
            f"{where} ends with ':' but no weight follows it ({_quote(body)}); "
            "write a number after the colon or remove it"
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
    text = body.strip()
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
    number_like = _NUMBER_LIKE.match(tail) is not None and (
        after_weight or not head[-1:].isdigit()
    )
    if number_like or (after_weight and not numbers):
        field_name = "stop" if after_weight else "weight"
        raise InvalidRequest(
            f"{where} has a {field_name} that is not a number: {_quote(tail)} in "
            f"{_quote(body)}; use a plain number like 0.5 or -1"
        )


def _where(index: int, count: int) -> str:
    return "the prompt" if count == 1 else f"prompt {index} of {count}"


def _quote(text: str, limit: int = 60) -> str:
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"'{text}'"
