"""Reading weights out of PyTorch checkpoints without trusting them by default.

``torch.load(weights_only=True)`` is tried first; it refuses any pickled object that is not a
tensor or plain container. Real taming checkpoints are Lightning files whose ``callbacks`` entry
is keyed by Lightning's ``ModelCheckpoint`` class, pickled by name. Safe loading is told to read
that name (and Lightning's other stateful callbacks) as an empty placeholder class, which runs
nothing, so such checkpoints load safely without Lightning. Any other pickled object is still
refused. Full unpickling can run arbitrary code, so it is allowed only for a file whose sha256
the owner pinned, or when the owner says ``models.trust_checkpoints = true``.

The extracted weights are then cached as safetensors, so every later load reads plain tensors
and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pipelines.downloads import (
    ModelFileError,
    cached_path_for_url,
    fetch_first,
    is_url,
    sha256_of,
)

log = logging.getLogger(__name__)

# The training loss (LPIPS + discriminator) rides along in taming checkpoints; inference never
# uses it, and building it would download VGG weights.
DROPPED_PREFIXES = ("loss.",)

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


def opt_in_hint(sha256_key: str) -> str:
    return (
        f'to allow it, pin the file\'s sha256 in config.toml ({sha256_key} = "...") or set '
        "models.trust_checkpoints = true, and only for a file from a source you trust"
    )


class _InertCallback:
    """What safe loading reads a Lightning callback class as: a name and nothing else."""


# Lightning saves the state of these callbacks keyed by their class. Only ``state_dict`` is used
# from a checkpoint, so the placeholder loses nothing.
_LIGHTNING_CALLBACKS = tuple(
    f"{package}.callbacks.{module}.{name}"
    for package in ("pytorch_lightning", "lightning.pytorch")
    for module, name in (
        ("model_checkpoint", "ModelCheckpoint"),
        ("early_stopping", "EarlyStopping"),
    )
)


def _load_safely(path: Path) -> Any:
    placeholders = [(_InertCallback, name) for name in _LIGHTNING_CALLBACKS]
    with torch.serialization.safe_globals(placeholders):
        return torch.load(path, map_location="cpu", weights_only=True)


class _MissingClass:
    """Stands in for a pickled class whose module is not installed (e.g. Lightning callbacks).

    Only ``state_dict`` is used from a checkpoint, so the rest may be inert placeholders.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            log.info(
                "checkpoint refers to %s.%s, which is not installed; using a placeholder",
                module,
                name,
            )
            return type(name, (_MissingClass,), {"__module__": module})


# torch.load takes a pickle *module*; this one is pickle with the tolerant Unpickler swapped in.
_tolerant_pickle = types.ModuleType("faraday_tolerant_pickle")
_tolerant_pickle.__dict__.update(pickle.__dict__)
_tolerant_pickle.Unpickler = _TolerantUnpickler  # type: ignore[attr-defined]


def _check_is_torch_file(path: Path, what: str) -> None:
    with path.open("rb") as f:
        head = f.read(4)
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO)):
        raise ModelFileError(f"{what}: {path} is not a PyTorch checkpoint")


def _unreadable(path: Path, what: str, exc: BaseException) -> ModelFileError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ModelFileError(
        f"{what}: {path} is not a readable PyTorch checkpoint ({detail[:200]}); it may be "
        "truncated or corrupt"
    )


def read_checkpoint(
    path: Path,
    *,
    what: str,
    sha256_key: str,
    pinned_sha256: str = "",
    trust: bool = False,
    pin_verified: bool = False,
) -> Any:
    """The unpickled contents of ``path`` under the trust policy in the module docstring.

    ``pin_verified`` says the caller already checked ``path`` against ``pinned_sha256``, which
    saves hashing a large file twice.
    """
    _check_is_torch_file(path, what)
    try:
        return _load_safely(path)
    except pickle.UnpicklingError as exc:
        if not str(exc).startswith("Weights only load failed"):
            raise _unreadable(path, what, exc) from None
        refusal = str(exc)
    except Exception as exc:
        raise _unreadable(path, what, exc) from None

    if trust:
        log.warning(
            "%s: %s holds pickled objects; unpickling it fully because "
            "models.trust_checkpoints is true",
            what,
            path,
        )
    elif pinned_sha256:
        actual = pinned_sha256.lower() if pin_verified else sha256_of(path)
        if actual != pinned_sha256.lower():
            raise ModelFileError(
                f"{what}: {path} holds pickled objects and its sha256 {actual} differs from the "
                f"pinned {pinned_sha256.lower()}; refusing to unpickle it"
            )
        log.info("%s: %s matches its pinned sha256; unpickling it fully", what, path)
    else:
        blocked = next((line for line in refusal.splitlines() if "Unsupported global" in line), "")
        reason = f" ({blocked.strip()[:160]})" if blocked else ""
        raise ModelFileError(
            f"{what}: {path} holds pickled objects that safe loading refuses{reason}; "
            + opt_in_hint(sha256_key)
        )
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle
        )
    except Exception as exc:
        raise _unreadable(path, what, exc) from None


def extract_state_dict(contents: Any, *, what: str, path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a Lightning checkpoint (its ``state_dict``) or of a bare state dict,
    without the training loss."""
    if isinstance(contents, Mapping) and isinstance(contents.get("state_dict"), Mapping):
        weights = contents["state_dict"]
    elif isinstance(contents, Mapping) and contents:
        weights = contents
    else:
        raise ModelFileError(f"{what}: {path} holds no state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelFileError(
                f"{what}: {path} is neither a Lightning checkpoint with a 'state_dict' nor a "
                f"bare state dict (entry {key!r} is a {type(value).__name__})"
            )
        if not key.startswith(DROPPED_PREFIXES):
            out[key] = value
    if not out:
        raise ModelFileError(f"{what}: {path} holds no model weights")
    return out


def extracted_cache_path(source: str, cache_dir: Path) -> Path:
    """Where the safetensors copy of ``source``'s weights lives.

    Next to the download for a URL; in the cache folder for a local file, whose own folder may
    not be writable.
    """
    if is_url(source):
        download = cached_path_for_url(source, cache_dir)
        return download.with_name(download.stem + ".weights.safetensors")
    local = Path(source).expanduser().resolve()
    path_hash = hashlib.sha256(str(local).encode()).hexdigest()[:12]
    return cache_dir / f"local-{local.stem}-{path_hash}.weights.safetensors"


def _source_identity(source: str) -> dict[str, str]:
    """What the cache records about its source, to tell later whether it still matches."""
    if is_url(source):
        return {"source": source}
    local = Path(source).expanduser().resolve()
    stat = local.stat()
    return {"source": str(local), "size": str(stat.st_size), "mtime_ns": str(stat.st_mtime_ns)}


def _cache_is_current(cache: Path, source: str, pinned_sha256: str) -> bool:
    try:
        with safe_open(str(cache), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        log.warning("ignoring unreadable weights cache %s: %s", cache, exc)
        return False
    if pinned_sha256:
        # The pin names the file by content, so the cache is right wherever the file now is.
        return meta.get("sha256") == pinned_sha256.lower()
    if is_url(source):
        return meta.get("source") == source
    local = Path(source).expanduser()
    if not local.is_file():
        return False  # fetch() will then say clearly that the file is gone
    current = _source_identity(source)
    return all(meta.get(k) == v for k, v in current.items())


def _save_cache(weights: dict[str, torch.Tensor], cache: Path, metadata: dict[str, str]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache.parent, prefix=cache.name + ".", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # Tensors in a checkpoint may be views into shared storage, which safetensors refuses.
        save_file(
            {k: v.detach().contiguous().clone() for k, v in weights.items()},
            str(tmp),
            metadata=metadata,
        )
        os.replace(tmp, cache)
    except OSError as exc:
        log.warning(
            "could not cache weights at %s (%s); the next load will unpickle again", cache, exc
        )
    finally:
        tmp.unlink(missing_ok=True)


def current_weights_cache(
    sources: Sequence[str], cache_dir: Path, pinned_sha256: str = ""
) -> Path | None:
    """The safetensors copy extracted earlier from one of ``sources`` that still matches it."""
    for candidate in sources:
        cache = extracted_cache_path(candidate, cache_dir)
        if cache.is_file() and _cache_is_current(cache, candidate, pinned_sha256):
            return cache
    return None


def load_weights(
    source: str | Sequence[str],
    *,
    cache_dir: Path,
    what: str,
    sha256_key: str,
    pinned_sha256: str = "",
    trust: bool = False,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """The weights in the checkpoint ``source`` names (a local path or a URL), via the cache.

    ``source`` may be several sources tried in order, all held to the one pin. ``what`` and
    ``sha256_key`` name the config keys in messages (``models.vqgan_checkpoint`` /
    ``models.vqgan_checkpoint_sha256``).
    """
    sources = (source,) if isinstance(source, str) else tuple(source)
    cache = current_weights_cache(sources, cache_dir, pinned_sha256)
    if cache is not None:
        log.info("%s: loading cached weights %s", what, cache)
        return load_file(str(cache))

    path, used = fetch_first(sources, cache_dir, what=what, sha256=pinned_sha256,
                             progress=progress)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise _unreadable(path, what, exc) from None
    contents = read_checkpoint(
        path,
        what=what,
        sha256_key=sha256_key,
        pinned_sha256=pinned_sha256,
        trust=trust,
        pin_verified=bool(pinned_sha256),  # fetch() refuses a file that does not match its pin
    )
    weights = extract_state_dict(contents, what=what, path=path)
    del contents
    metadata = _source_identity(used)
    if pinned_sha256:
        # fetch() verified the pin, so the content hash is known without reading the file again.
        metadata["sha256"] = pinned_sha256.lower()
    metadata["dropped_prefixes"] = ",".join(DROPPED_PREFIXES)
    _save_cache(weights, extracted_cache_path(used, cache_dir), metadata)
    return weights
