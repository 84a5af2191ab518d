"""What the stand-in remembers about requests, and the faults a test asks it to inject."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Discord's JSON error codes for the faults tests inject.
UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
CANNOT_EDIT_OTHERS_MESSAGE = 50005
MISSING_PERMISSIONS = 50013
INTERACTION_ALREADY_ACKNOWLEDGED = 40060
INVALID_FORM_BODY = 50035

_DEFAULT_ERRORS: dict[int, tuple[int, str]] = {
    400: (INVALID_FORM_BODY, "Invalid Form Body"),
    403: (MISSING_PERMISSIONS, "Missing Permissions"),
    404: (UNKNOWN_MESSAGE, "Unknown Message"),
    429: (0, "You are being rate limited."),
}


def error_body(status: int, code: int | None = None, message: str | None = None) -> dict[str, Any]:
    """The JSON Discord sends with an error status; 5xx default to a plain server error."""
    default_code, default_message = _DEFAULT_ERRORS.get(status, (0, f"{status}: Server Error"))
    return {
        "code": default_code if code is None else code,
        "message": default_message if message is None else message,
    }


@dataclass(frozen=True)
class UploadedFile:
    """One multipart file part as the client sent it."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class RecordedRequest:
    """One HTTP request the stand-in received (REST or CDN), in arrival order."""

    seq: int
    at: float
    method: str
    # The API path without the /api/v10 prefix ("/channels/1/messages"), or "/cdn/..." for
    # attachment downloads.
    path: str
    query: dict[str, str]
    json: Any
    files: list[UploadedFile]
    status: int = 0
    route: str | None = None
    injected_fault: bool = False

    def describe(self) -> str:
        extra = " (injected)" if self.injected_fault else ""
        return f"#{self.seq} {self.method} {self.path} -> {self.status}{extra}"


@dataclass
class FaultRule:
    """Answer the next `times` requests matching method and path with an error."""

    method: str
    path_pattern: re.Pattern[str]
    status: int
    times: int | None
    body: dict[str, Any]
    headers: dict[str, str]
    hits: list[RecordedRequest] = field(default_factory=list)

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and len(self.hits) >= self.times:
            return False
        if self.method != "*" and self.method != method:
            return False
        return self.path_pattern.search(path) is not None

    @property
    def exhausted(self) -> bool:
        return self.times is not None and len(self.hits) >= self.times


def fault_rule(
    method: str,
    path_regex: str,
    status: int,
    *,
    times: int | None,
    retry_after: float,
    code: int | None,
    message: str | None,
    is_global: bool,
) -> FaultRule:
    body = error_body(status, code, message)
    headers: dict[str, str] = {}
    if status == 429:
        body["retry_after"] = retry_after
        body["global"] = is_global
        headers = {
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Scope": "global" if is_global else "user",
            # discord.py treats a 429 without Via as a Cloudflare ban and raises instead of
            # retrying; Discord's own answers carry it.
            "Via": "1.1 google",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
    return FaultRule(
        method=method.upper(),
        path_pattern=re.compile(path_regex),
        status=status,
        times=times,
        body=body,
        headers=headers,
    )
