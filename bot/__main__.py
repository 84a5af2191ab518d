"""``python -m bot [--config PATH]``: start the Discord bot.

Start-up: read and validate the config, open the store, prune old results, recover interrupted
jobs, start the worker, then connect to Discord at once while the worker loads the preset's models
(a first download can take minutes; jobs queue meanwhile). SIGINT or SIGTERM stops taking jobs,
lets the running job stop at its next step (it is re-queued for the next start), posts the last
message edits, disconnects and closes the store; while the models load it stops at once.

Bad configuration, a missing token, a data folder or database that cannot be used, or a model
file that is missing or wrong: one line per problem on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from bot.config import (
    DEFAULT_CONFIG_PATH,
    MISSING_TOKEN_MESSAGE,
    Config,
    ConfigError,
    discord_token,
    load_config,
)
from bot.worker import GIL_SWITCH_INTERVAL_SECONDS
from pipelines.downloads import ModelFileError
from pipelines.fetch_models import models_are_local
from pipelines.model_plan import check_local_files

log = logging.getLogger("bot")

EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG_PATH),
        metavar="PATH",
        help="the TOML configuration file (default: %(default)s)",
    )
    return parser.parse_args(argv)


async def run(config: Config, token: str) -> int:
    import discord

    from bot.app import FaradayBot
    from bot.executor import ClusterRefused
    from bot.store import StoreUnusable

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    if config.scheduler.pipeline == "real":
        try:
            # A model file named by a path that does not exist fails now, not after connecting.
            check_local_files(config.models)
        except ModelFileError as exc:
            print(f"error: cannot load the models: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        bot = await FaradayBot.create(config)
    except StoreUnusable as exc:
        print(f"error: cannot open the storage: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    exit_code = 0
    stopper = asyncio.create_task(stop.wait(), name="signal-wait")
    try:
        starting = asyncio.create_task(bot.start_services(wait_for_models=False),
                                       name="start-up")
        await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("stopping during start-up")
            starting.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await starting
            await bot.stop_services()
            return 0
        try:
            starting.result()
        except ClusterRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            await bot.stop_services()
            return EXIT_BAD_INPUT
        except Exception as exc:
            log.exception("start-up failed")
            print(f"error: start-up failed: {exc}", file=sys.stderr)
            await bot.stop_services()
            return 1
        # Connect at once; the models load on the worker thread meanwhile, and jobs queue.
        client = asyncio.create_task(bot.start(token), name="discord-client")
        loading = bot.models_loading
        assert loading is not None
        watched: set[asyncio.Task[Any]] = {client, stopper, loading}
        while True:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if loading in done and loading.exception() is None and not (done - {loading}):
                watched.discard(loading)
                continue
            break
        if loading in done and loading.exception() is not None:
            exc = loading.exception()
            if isinstance(exc, ModelFileError):
                print(f"error: cannot load the models: {exc}", file=sys.stderr)
                exit_code = EXIT_BAD_INPUT
            else:
                log.error("loading the models failed", exc_info=exc)
                print(f"error: loading the models failed: {exc}", file=sys.stderr)
                exit_code = 1
        elif client in done and client.exception() is not None:
            exc = client.exception()
            if isinstance(exc, discord.LoginFailure):
                print(f"error: Discord refused the token in DISCORD_TOKEN ({exc})",
                      file=sys.stderr)
                exit_code = EXIT_BAD_INPUT
            else:
                log.error("the Discord connection failed", exc_info=exc)
                exit_code = 1
        else:
            log.info("shutting down")
        await bot.stop_services()
        if not client.done():
            await bot.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await client
    finally:
        stopper.cancel()
        if not bot.is_closed():
            await bot.close()
        await bot.store.close()
        for signum in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)
        log.info("stopped")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problems: list[str] = []
    config: Config | None = None
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        problems.extend(f"config error: {problem}" for problem in exc.problems)
    token = discord_token()
    if token is None:
        problems.append(MISSING_TOKEN_MESSAGE)
    if problems or config is None:
        for line in problems:
            print(line, file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(
        level=config.logging.level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if config.scheduler.pipeline == "real" and models_are_local(config.models):
        # `make models` fetched exactly these hub models: never ask the hub again. Set before
        # huggingface_hub is imported, which reads it once.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        log.info("the models were fetched by `make models`; the Hugging Face hub is not contacted")
    return asyncio.run(run(config, token))


if __name__ == "__main__":
    sys.exit(main())
