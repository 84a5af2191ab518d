"""Fetching model files from a URL: once, verified, and never an HTML page in their place.

A real HTTP server on 127.0.0.1 stands in for the model host.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.downloads import ModelFileError, cached_path_for_url, fetch

CHECKPOINT_BYTES = b"PK\x03\x04" + bytes(range(256)) * 64
YAML_BYTES = b"model:\n  target: taming.models.vqgan.VQModel\n"
HTML_BYTES = b"<!DOCTYPE html>\n<html><body><h2>Link does not exist :-(</h2></body></html>\n"


@dataclass
class FakeHost:
    base: str
    # path -> (status, content type, body)
    routes: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def host() -> Iterator[FakeHost]:
    fake = FakeHost(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.hits[self.path] += 1
            status, content_type, body = fake.routes.get(
                self.path, (404, "text/plain", b"not found")
            )
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_lands_in_the_cache_with_a_progress_bar(
    host: FakeHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    host.routes["/ckpts/last.ckpt"] = (200, "application/octet-stream", CHECKPOINT_BYTES)
    path = fetch(host.url("/ckpts/last.ckpt"), tmp_path, what="models.vqgan_checkpoint")
    assert path.parent == tmp_path
    assert path.read_bytes() == CHECKPOINT_BYTES
    assert path.name.startswith("last-") and path.suffix == ".ckpt"
    assert leftovers(tmp_path) == [path.name]  # no temporary file left behind
    assert path.name in capsys.readouterr().err  # tqdm's bar names the file


def test_second_fetch_is_served_from_the_cache(host: FakeHost, tmp_path: Path):
    url = host.url("/configs/model.yaml")
    host.routes["/configs/model.yaml"] = (200, "application/x-yaml", YAML_BYTES)
    pin = hashlib.sha256(YAML_BYTES).hexdigest()
    first = fetch(url, tmp_path, what="models.vqgan_config", sha256=pin, progress=False)
    second = fetch(url, tmp_path, what="models.vqgan_config", sha256=pin, progress=False)
    assert first == second
    assert host.hits["/configs/model.yaml"] == 1


def test_sha256_mismatch_is_rejected_and_nothing_is_kept(host: FakeHost, tmp_path: Path):
    host.routes["/last.ckpt"] = (200, "application/octet-stream", CHECKPOINT_BYTES)
    with pytest.raises(ModelFileError, match=r"sha256 .* pins") as refused:
        fetch(
            host.url("/last.ckpt"),
            tmp_path,
            what="models.vqgan_checkpoint",
            sha256="ab" * 32,
            progress=False,
        )
    assert "models.vqgan_checkpoint" in str(refused.value)
    assert leftovers(tmp_path) == []


def test_damaged_cached_file_is_fetched_again_when_pinned(host: FakeHost, tmp_path: Path):
    url = host.url("/last.ckpt")
    host.routes["/last.ckpt"] = (200, "application/octet-stream", CHECKPOINT_BYTES)
    pin = hashlib.sha256(CHECKPOINT_BYTES).hexdigest()
    path = fetch(url, tmp_path, what="ckpt", sha256=pin, progress=False)
    path.write_bytes(b"damaged")
    assert fetch(url, tmp_path, what="ckpt", sha256=pin, progress=False).read_bytes() == (
        CHECKPOINT_BYTES
    )
    assert host.hits["/last.ckpt"] == 2


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_page_is_rejected(host: FakeHost, tmp_path: Path, content_type: str):
    # Some mirrors answer a dead link with a 200 "Link does not exist" page, whatever its type.
    host.routes["/configs/model.yaml"] = (200, content_type, HTML_BYTES)
    with pytest.raises(ModelFileError, match="HTML page, not the file"):
        fetch(host.url("/configs/model.yaml"), tmp_path, what="models.vqgan_config", progress=False)
    assert leftovers(tmp_path) == []


def test_http_error_is_reported(host: FakeHost, tmp_path: Path):
    with pytest.raises(ModelFileError, match="HTTP 404"):
        fetch(host.url("/missing.ckpt"), tmp_path, what="models.vqgan_checkpoint", progress=False)
    assert leftovers(tmp_path) == []


def test_unreachable_host_says_to_use_a_local_path(tmp_path: Path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ModelFileError, match=r"could not reach .* local path"):
        fetch(f"http://127.0.0.1:{port}/last.ckpt", tmp_path, what="x", timeout=5, progress=False)


def test_local_path_is_used_as_is(tmp_path: Path):
    local = tmp_path / "mine.ckpt"
    local.write_bytes(CHECKPOINT_BYTES)
    cache = tmp_path / "cache"
    assert fetch(str(local), cache, what="x") == local
    pin = hashlib.sha256(CHECKPOINT_BYTES).hexdigest()
    assert fetch(str(local), cache, what="x", sha256=pin) == local
    assert not cache.exists()


def test_local_path_problems_are_clear_and_do_not_delete_the_file(tmp_path: Path):
    with pytest.raises(ModelFileError, match=r"local file .*absent\.ckpt does not exist"):
        fetch(str(tmp_path / "absent.ckpt"), tmp_path, what="x")
    local = tmp_path / "mine.ckpt"
    local.write_bytes(CHECKPOINT_BYTES)
    with pytest.raises(ModelFileError, match="sha256"):
        fetch(str(local), tmp_path, what="x", sha256="cd" * 32)
    assert local.exists()
    page = tmp_path / "saved-from-browser.yaml"
    page.write_bytes(HTML_BYTES)
    with pytest.raises(ModelFileError, match="HTML page"):
        fetch(str(page), tmp_path, what="x")


def test_heibox_links_get_distinct_readable_cache_names(tmp_path: Path):
    # Every heibox VQGAN is configs/model.yaml + ckpts/last.ckpt; only the share id differs.
    a = "https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/files/?p=%2Fconfigs%2Fmodel.yaml&dl=1"
    b = "https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/files/?p=%2Fconfigs%2Fmodel.yaml&dl=1"
    path_a, path_b = cached_path_for_url(a, tmp_path), cached_path_for_url(b, tmp_path)
    assert path_a != path_b
    for path in (path_a, path_b):
        assert path.parent == tmp_path
        assert path.name.startswith("model-") and path.suffix == ".yaml"


def test_default_preset_loads_a_vqgan_from_urls_and_then_needs_only_its_cache(
    host: FakeHost, tmp_path: Path
):
    import torch

    from pipelines import presets
    from pipelines.settings import ModelSettings
    from pipelines.vqgan import VqganConfig
    from tests.pipelines.test_vqgan_loading import (
        assert_same_weights,
        lightning_checkpoint,
        random_vqgan,
        save_with_fake_module,
        yaml_for,
    )

    model = random_vqgan(VqganConfig.tiny(), seed=2024)
    ckpt = tmp_path / "upload.ckpt"
    save_with_fake_module(lightning_checkpoint(model, pickled_class=True), ckpt)
    host.routes["/configs/model.yaml"] = (200, "text/plain", yaml_for(model.config).encode())
    host.routes["/ckpts/last.ckpt"] = (200, "application/octet-stream", ckpt.read_bytes())
    settings = ModelSettings(
        preset="default",
        cache_dir=tmp_path / "models",
        vqgan_config=host.url("/configs/model.yaml"),
        vqgan_checkpoint=host.url("/ckpts/last.ckpt"),
        vqgan_checkpoint_sha256=hashlib.sha256(ckpt.read_bytes()).hexdigest(),
    )
    presets.clear_caches()
    try:
        assert_same_weights(presets.load_vqgan(settings, torch.device("cpu")), model)
        cached_ckpt = cached_path_for_url(settings.vqgan_checkpoint, settings.cache_dir)
        cached_ckpt.unlink()  # the extracted safetensors copy is all a later load needs

        presets.clear_caches()
        assert_same_weights(presets.load_vqgan(settings, torch.device("cpu")), model)
    finally:
        presets.clear_caches()
    assert host.hits["/ckpts/last.ckpt"] == 1
    assert host.hits["/configs/model.yaml"] == 1


def test_a_config_that_is_not_a_taming_yaml_is_never_cached(host: FakeHost, tmp_path: Path):
    import torch

    from pipelines import presets
    from pipelines.settings import ModelSettings
    from pipelines.vqgan import VqganConfig
    from tests.pipelines.test_vqgan_loading import yaml_for

    # A dead link answered in plain text (not HTML) with status 200.
    host.routes["/configs/model.yaml"] = (200, "text/plain", b"Link does not exist :-(\n")
    settings = ModelSettings(
        preset="default",
        cache_dir=tmp_path / "models",
        vqgan_config=host.url("/configs/model.yaml"),
        vqgan_checkpoint=str(tmp_path / "never-reached.ckpt"),
    )
    presets.clear_caches()
    try:
        with pytest.raises(ModelFileError, match="is not a taming config") as refused:
            presets.load_vqgan(settings, torch.device("cpu"))
        assert host.url("/configs/model.yaml") in str(refused.value)  # the URL, not a temp file
        assert leftovers(settings.cache_dir) == []

        # Once the host serves the real file, it is fetched again rather than the bad one reused.
        good = yaml_for(VqganConfig.tiny()).encode()
        host.routes["/configs/model.yaml"] = (200, "text/plain", good)
        with pytest.raises(ModelFileError, match=r"models\.vqgan_checkpoint: local file"):
            presets.load_vqgan(settings, torch.device("cpu"))
        assert host.hits["/configs/model.yaml"] == 2
        cached = cached_path_for_url(settings.vqgan_config, settings.cache_dir)
        assert cached.read_bytes() == good
    finally:
        presets.clear_caches()


def test_a_cached_file_that_fails_its_check_is_fetched_again(host: FakeHost, tmp_path: Path):
    url = host.url("/configs/model.yaml")
    host.routes["/configs/model.yaml"] = (200, "text/plain", YAML_BYTES)
    cached = cached_path_for_url(url, tmp_path)
    cached.write_bytes(b"left by an older version that did not check")

    def must_be_yaml(path: Path, name: str) -> None:
        if not path.read_bytes().startswith(b"model:"):
            raise ModelFileError(f"{name} is not a config")

    assert fetch(url, tmp_path, what="x", progress=False, check=must_be_yaml) == cached
    assert cached.read_bytes() == YAML_BYTES
    assert host.hits["/configs/model.yaml"] == 1


def dead_url(path: str) -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def test_a_vqgan_listed_under_several_sources_comes_from_the_first_that_works(
    host: FakeHost, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    import torch

    from pipelines import presets
    from pipelines.settings import ModelSettings
    from pipelines.vqgan import VqganConfig
    from tests.pipelines.test_vqgan_loading import (
        assert_same_weights,
        lightning_checkpoint,
        random_vqgan,
        save_with_fake_module,
        yaml_for,
    )

    model = random_vqgan(VqganConfig.tiny(), seed=77)
    ckpt = tmp_path / "upload.ckpt"
    save_with_fake_module(lightning_checkpoint(model, pickled_class=True), ckpt)
    # Mirror 1 answers with a "Link does not exist" page, mirror 2 is down, mirror 3 has the files.
    host.routes["/m1/model.yaml"] = (200, "text/html", HTML_BYTES)
    host.routes["/m1/last.ckpt"] = (200, "application/octet-stream", HTML_BYTES)
    host.routes["/m3/model.yaml"] = (200, "text/plain", yaml_for(model.config).encode())
    host.routes["/m3/last.ckpt"] = (200, "application/octet-stream", ckpt.read_bytes())
    settings = ModelSettings.from_mapping({
        "preset": "default",
        "cache_dir": str(tmp_path / "models"),
        "vqgan_config": [host.url("/m1/model.yaml"), dead_url("/m2/model.yaml"),
                         host.url("/m3/model.yaml")],
        "vqgan_checkpoint": [host.url("/m1/last.ckpt"), dead_url("/m2/last.ckpt"),
                             host.url("/m3/last.ckpt")],
        "vqgan_checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
    })
    presets.clear_caches()
    try:
        with caplog.at_level("INFO", logger="pipelines.downloads"):
            assert_same_weights(presets.load_vqgan(settings, torch.device("cpu")), model)
        used = [r.getMessage() for r in caplog.records if "using source" in r.getMessage()]
        assert used == [
            f"models.vqgan_config: using source 3 of 3: {host.url('/m3/model.yaml')}",
            f"models.vqgan_checkpoint: using source 3 of 3: {host.url('/m3/last.ckpt')}",
        ]
        assert host.hits["/m1/model.yaml"] == 1 and host.hits["/m1/last.ckpt"] == 1
        # Nothing from the bad mirrors was kept.
        assert not cached_path_for_url(host.url("/m1/last.ckpt"), settings.cache_dir).exists()

        # A later load reads the cache of the mirror that worked, without asking any mirror.
        presets.clear_caches()
        assert_same_weights(presets.load_vqgan(settings, torch.device("cpu")), model)
        assert host.hits["/m3/last.ckpt"] == 1 and host.hits["/m1/last.ckpt"] == 1
    finally:
        presets.clear_caches()


def test_a_source_with_the_wrong_content_is_passed_over_for_the_next(
    host: FakeHost, tmp_path: Path
):
    from pipelines.downloads import fetch_first

    host.routes["/a/last.ckpt"] = (200, "application/octet-stream", b"an older upload")
    host.routes["/b/last.ckpt"] = (200, "application/octet-stream", CHECKPOINT_BYTES)
    path, used = fetch_first(
        [host.url("/a/last.ckpt"), host.url("/b/last.ckpt")], tmp_path,
        what="models.vqgan_checkpoint", sha256=hashlib.sha256(CHECKPOINT_BYTES).hexdigest(),
        progress=False,
    )
    assert used == host.url("/b/last.ckpt")
    assert path.read_bytes() == CHECKPOINT_BYTES
    assert leftovers(tmp_path) == [path.name]


def test_when_every_source_fails_the_error_names_each_failure(host: FakeHost, tmp_path: Path):
    from pipelines.downloads import fetch_first

    host.routes["/a/model.yaml"] = (200, "text/html", HTML_BYTES)
    dead = dead_url("/b/model.yaml")
    with pytest.raises(ModelFileError) as failed:
        fetch_first([host.url("/a/model.yaml"), dead, str(tmp_path / "missing.yaml")], tmp_path,
                    what="models.vqgan_config", timeout=5, progress=False)
    message = str(failed.value)
    assert message.startswith("models.vqgan_config: none of the 3 sources worked: ")
    assert "source 1 (" in message and "HTML page" in message
    assert f"source 2 (could not reach {dead}" in message
    assert f"source 3 (local file {tmp_path / 'missing.yaml'} does not exist)" in message
    assert "\n" not in message
    assert leftovers(tmp_path) == []
