"""A GPU worker: ``python -m bot.gpu_worker --config CFG [--device cuda:0]``.

Run one per GPU, on any machine that can reach the bot's PostgreSQL (``[cluster] database_url``);
it needs no inbound connection and never imports discord. It loads the models once, runs one job
at a time, heartbeats through procrastinate, and on SIGTERM aborts its job as "shutdown" so the
bot re-queues it in its fair place.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import replace

from bot.config import ConfigError, load_config

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.gpu_worker", description=__doc__)
    parser.add_argument("--config", default="config.toml", help="the bot's config.toml")
    parser.add_argument("--device", help="this worker's device, e.g. cuda:1 (default: "
                        "[models] device)")
    parser.add_argument("--name", help="a name for logs and the queue view (default: host-pid)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    if not config.cluster.enabled:
        print(f"error: {args.config} has no [cluster] database_url: a GPU worker needs the "
              "PostgreSQL the bot uses", file=sys.stderr)
        return 2
    models = config.models
    if args.device:
        models = replace(models, device=args.device, devices=())
        problems = models.problems()
        if problems:
            print(f"error: --device {args.device!r}: must be auto, cpu, cuda or cuda:N",
                  file=sys.stderr)
            return 2
    logging.basicConfig(level=config.logging.level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from bot.cluster.worker_side import GpuWorker
    from bot.jobs import JobKind
    from bot.scheduler import make_source

    source = make_source(config.scheduler.pipeline, models, config.scheduler.stand_in)
    log.info("loading the models on %s", models.device)
    source.preload(tuple(JobKind))
    worker = GpuWorker(config.cluster.database_url, config.cluster, source, args.name)

    async def run() -> None:
        worker.install_signal_handlers()
        await worker.serve()

    asyncio.run(run())
    log.info("worker stopped after %d job(s)", worker.runner.jobs_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
