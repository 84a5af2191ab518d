"""Model files by local path or URL: URLs are fetched once into the cache folder and validated.

A download goes to a temporary file beside its destination and is renamed into place only after
it has been checked, so an interrupted or rejected download never leaves a file that a later run
would mistake for a good one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from tqdm import tqdm

log = logging.getLogger(__name__)

FileKind = Literal["yaml", "checkpoint"]
# Checks a file's contents; raises ModelFileError naming the file by the string it is given.
ContentCheck = Callable[[Path, str], object]

DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_USER_AGENT = "faraday-model-fetch/0.1"


class ModelFileError(RuntimeError):
    """A model file is missing, unreachable or not what it should be.

    ``str(exc)`` is one human-readable line that says what to do about it.
    """


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_path_for_url(url: str, cache_dir: Path) -> Path:
    """Where ``url`` is stored once downloaded.

    Names carry a hash of the URL because different models share file names: every heibox VQGAN
    is ``configs/model.yaml`` plus ``ckpts/last.ckpt``.
    """
    parsed = urllib.parse.urlsplit(url)
    # Seafile share links (heibox) name the file in the ``p`` query parameter, not the path.
    inner = urllib.parse.parse_qs(parsed.query).get("p", [""])[0]
    name = Path(inner).name or Path(parsed.path).name or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    stem, suffix = os.path.splitext(name)
    url_hash = hashlib.sha256(url.encode()).hexdigest()[:12]
    return cache_dir / f"{stem}-{url_hash}{suffix}"


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _html_message(what: str, where: str) -> str:
    return (
        f"{what}: {where} is an HTML page, not the file (some mirrors answer a dead link with a "
        "'Link does not exist' page); check the URL, or download the file yourself and set a "
        "local path in config.toml"
    )


def check_not_html(path: Path, what: str, where: str) -> None:
    """Refuse a web page saved in place of a model file."""
    with path.open("rb") as f:
        head = f.read(512)
    if _looks_like_html(head):
        raise ModelFileError(_html_message(what, where))


def _verify_pin(path: Path, sha256: str, what: str, where: str) -> None:
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise ModelFileError(
            f"{what}: {where} has sha256 {actual}, but config.toml pins {sha256.lower()}; "
            "the file is not the one expected (corrupt download or wrong URL)"
        )


def fetch(
    source: str,
    cache_dir: Path,
    *,
    what: str,
    sha256: str = "",
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
    check: ContentCheck | None = None,
) -> Path:
    """A local path to the file ``source`` names, downloading it into ``cache_dir`` if needed.

    ``what`` names the file in messages (e.g. ``"models.vqgan_config"``). ``sha256``, when not
    empty, must match the file's contents; a mismatching download is deleted. ``check``, when
    given, validates a download before it enters the cache (and a cached copy before reuse), so
    a file that is not what it should be is never kept to fail every later run.
    """
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelFileError(f"{what}: local file {path} does not exist")
        check_not_html(path, what, str(path))
        if sha256:
            _verify_pin(path, sha256, what, str(path))
        return path

    destination = cached_path_for_url(source, cache_dir)
    if destination.is_file():
        try:
            if sha256:
                _verify_pin(destination, sha256, what, str(destination))
            if check is not None:
                check(destination, str(destination))
            log.debug("%s: using cached %s", what, destination)
            return destination
        except ModelFileError as exc:
            # The pin changed or the cache was damaged; fetching again is the honest fix.
            log.warning("%s: cached %s is refused (%s); fetching again", what, destination, exc)
            destination.unlink()
    _download(
        source,
        destination,
        what=what,
        sha256=sha256,
        timeout=timeout,
        progress=progress,
        check=check,
    )
    return destination


def fetch_first(
    sources: Sequence[str],
    cache_dir: Path,
    *,
    what: str,
    sha256: str = "",
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
    check: ContentCheck | None = None,
) -> tuple[Path, str]:
    """The first of ``sources`` that gives a good file, and which source that was.

    Every source is held to the same ``sha256`` and ``check``. A source that is unreachable,
    answers with an error or an HTML page, or gives the wrong file is logged and the next one is
    tried; only when all fail is there an error, naming what went wrong with each.
    """
    if not sources:
        raise ModelFileError(f"{what}: no source is configured")
    failures: list[str] = []
    # A copy already on this machine wins over asking any host, whatever its place in the list:
    # after ``make models`` nothing is downloaded, even when an earlier mirror is down.
    on_disk = [
        (index, source) for index, source in enumerate(sources, start=1)
        if (cached_path_for_url(source, cache_dir) if is_url(source)
            else Path(source).expanduser()).is_file()
    ]
    on_disk_indices = {index for index, _ in on_disk}
    remote = [(i, s) for i, s in enumerate(sources, start=1) if i not in on_disk_indices]
    for index, source in [*on_disk, *remote]:
        try:
            path = fetch(source, cache_dir, what=what, sha256=sha256, timeout=timeout,
                         progress=progress, check=check)
        except ModelFileError as exc:
            if len(sources) == 1:
                raise
            log.warning("%s: source %d of %d failed: %s", what, index, len(sources), exc)
            failures.append(f"source {index} ({str(exc).removeprefix(what + ': ')})")
            continue
        if len(sources) > 1:
            log.info("%s: using source %d of %d: %s", what, index, len(sources), source)
        return path, source
    raise ModelFileError(f"{what}: none of the {len(sources)} sources worked: "
                         + "; ".join(failures))


def _download(
    url: str,
    destination: Path,
    *,
    what: str,
    sha256: str,
    timeout: float,
    progress: bool,
    check: ContentCheck | None,
) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: downloading %s to %s", what, url, destination)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    fd, tmp_name = tempfile.mkstemp(
        dir=destination.parent, prefix=destination.name + ".", suffix=".part"
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as exc:
                raise ModelFileError(
                    f"{what}: downloading {url} failed with HTTP {exc.code} {exc.reason}"
                ) from None
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise ModelFileError(
                    f"{what}: could not reach {url} ({reason}); on a machine without internet, "
                    "fetch the file elsewhere and set a local path in config.toml"
                ) from None
            with response:
                content_type = response.headers.get("Content-Type", "")
                if content_type.split(";")[0].strip().lower() == "text/html":
                    raise ModelFileError(_html_message(what, url))
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                digest = hashlib.sha256()
                first = True
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=destination.name,
                    disable=not progress,
                ) as bar:
                    while True:
                        try:
                            chunk = response.read(_CHUNK)
                        except (TimeoutError, OSError) as exc:
                            raise ModelFileError(
                                f"{what}: download of {url} broke off ({exc})"
                            ) from None
                        if not chunk:
                            break
                        if first and _looks_like_html(chunk[:512]):
                            raise ModelFileError(_html_message(what, url))
                        first = False
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
        if total is not None and tmp.stat().st_size != total:
            raise ModelFileError(
                f"{what}: download of {url} is incomplete "
                f"({tmp.stat().st_size} of {total} bytes); try again"
            )
        if sha256 and digest.hexdigest() != sha256.lower():
            raise ModelFileError(
                f"{what}: {url} has sha256 {digest.hexdigest()}, but config.toml pins "
                f"{sha256.lower()}; the download was deleted"
            )
        if check is not None:
            check(tmp, url)
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
