"""The prompt block list: words and regular expressions a server keeps out of its prompts.

Terms come from ``[moderation]`` in config.toml and from ``/settings blocklist_add`` (per server
or channel). A word matches whole words, case-insensitively; a pattern is a Python regular
expression searched case-insensitively. A pattern is compiled when it is added (or when the config
is read): one that does not compile is refused there and never reaches :class:`PromptFilter`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

# Longest term accepted; a block list is for words and short patterns, not documents.
MAX_TERM_CHARS = 200


class TermKind(str, Enum):
    WORD = "word"
    PATTERN = "pattern"


class BadTerm(ValueError):
    """A term that cannot be used; ``str(exc)`` says why, in one line for an admin."""


@dataclass(frozen=True)
class BlockedTerm:
    kind: TermKind
    text: str


def compile_term(term: BlockedTerm) -> re.Pattern[str]:
    """The term's matcher; :class:`BadTerm` for an empty term or a pattern that does not compile."""
    text = term.text
    if not text.strip():
        raise BadTerm("an empty term would block every prompt")
    if len(text) > MAX_TERM_CHARS:
        raise BadTerm(f"a term may be at most {MAX_TERM_CHARS} characters, not {len(text)}")
    if term.kind is TermKind.WORD:
        # \b only anchors next to word characters; a "word" such as "c++" is anchored by
        # "not preceded/followed by a word character" instead.
        return re.compile(rf"(?<!\w){re.escape(text.strip())}(?!\w)", re.IGNORECASE)
    try:
        pattern = re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise BadTerm(f"the regular expression does not compile: {exc}") from None
    if pattern.search(""):
        raise BadTerm(
            "the regular expression matches an empty prompt, so it would block everything"
        )
    return pattern


class PromptFilter:
    """Compiled terms; :meth:`blocked_term` says which one a text hits (for the log, never the
    user)."""

    def __init__(self, terms: Iterable[BlockedTerm]) -> None:
        self._compiled = [(term, compile_term(term)) for term in terms]

    def __len__(self) -> int:
        return len(self._compiled)

    def blocked_term(self, *texts: str | None) -> BlockedTerm | None:
        for text in texts:
            if not text:
                continue
            for term, pattern in self._compiled:
                if pattern.search(text):
                    return term
        return None
