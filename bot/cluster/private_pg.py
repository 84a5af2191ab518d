"""A throwaway PostgreSQL server in a temporary folder, for tests, CI and the cluster benchmark.

``initdb`` with trust authentication, listening on 127.0.0.1 on a free port with ``fsync=off``;
run as the ``postgres`` user when we are root (the server refuses to run as root). If the server
binaries are missing it installs them with apt-get first. ``python -m bot.cluster.private_pg --
CMD ...`` runs CMD with ``FARADAY_TEST_DATABASE_URL`` set and always stops the server afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

URL_ENV = "FARADAY_TEST_DATABASE_URL"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why."""


def _bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / "initdb").exists():
            return root
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def server_binaries(install: bool = True) -> Path:
    """The folder holding initdb and pg_ctl, installing PostgreSQL with apt-get if allowed."""
    bindir = _bindir()
    if bindir is None and install and shutil.which("apt-get") and os.geteuid() == 0:
        log.warning("PostgreSQL's server binaries are missing; installing them with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "postgresql"], check=False, env=env)
        bindir = _bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL's server binaries (initdb, pg_ctl) were not found; install the "
            "`postgresql` package (apt-get install -y postgresql)"
        )
    return bindir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivateCluster:
    bindir: Path
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, *argv: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), *args),
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._pg_ctl("-w", "-l", str(self.folder / "log"), "-o", options, "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop", check=False)

    def kill(self) -> None:
        """Stop at once (immediate mode): what a crashed or unplugged server looks like."""
        self._pg_ctl("-m", "immediate", "-w", "stop", check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def create_cluster(port: int | None = None) -> PrivateCluster:
    """initdb and start a fresh server; the caller must call :meth:`PrivateCluster.remove`."""
    bindir = server_binaries()
    folder = Path(tempfile.mkdtemp(prefix="faraday-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    cluster = PrivateCluster(bindir, folder, port or free_port())
    try:
        subprocess.run(
            cluster._as_owner(
                str(bindir / "initdb"),
                "-D",
                str(cluster.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        cluster.start()
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise PostgresUnavailable(
            f"could not start a private PostgreSQL: {' '.join(exc.cmd[-3:])} failed: "
            f"{detail[-1] if detail else exc.returncode}"
        ) from None
    return cluster


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    cluster = create_cluster()
    try:
        yield cluster
    finally:
        cluster.remove()


def main(argv: list[str] | None = None) -> int:
    """Run a command with a private server up, and stop the server however the command ends."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        print("usage: python -m bot.cluster.private_pg -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    try:
        cluster = create_cluster()
    except PostgresUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # SIGTERM (a CI timeout) must still stop the server: turn it into an ordinary exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        env = {**os.environ, URL_ENV: cluster.url()}
        return subprocess.run(args, env=env, check=False).returncode
    finally:
        cluster.remove()


if __name__ == "__main__":
    raise SystemExit(main())
