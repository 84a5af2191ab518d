"""What the bot and the GPU workers share in PostgreSQL besides procrastinate's own tables.

Only execution state in flight lives here, keyed by procrastinate's job id (one id per attempt,
so a late write from a worker that was given up on never lands on a newer attempt). SQLite stays
the source of truth for jobs, results and messages.

- ``faraday_inputs``: input images, content-addressed by sha256, written before the job is
  enqueued;
- ``faraday_progress``: one row per running job, overwritten (step, total, preview PNG), plus
  the self-mask and the preview it came with, written once and never overwritten, so the bot
  shows it even when later previews replaced that one before it was read;
- ``faraday_results`` and ``faraday_outcomes``: how an attempt ended, written in one transaction;
- ``faraday_workers``: which procrastinate worker serves which queue (procrastinate's own
  heartbeats say whether it is alive);
- ``faraday_bots``: which bot owns a queue, so a second bot on it refuses to start.
"""

from __future__ import annotations

from typing import Any

TASK_NAME = "faraday.run_job"

SCHEMA = """
CREATE TABLE IF NOT EXISTS faraday_inputs (
    digest text PRIMARY KEY,
    data bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS faraday_progress (
    pj_id bigint PRIMARY KEY,
    queue text NOT NULL,
    job_id bigint NOT NULL,
    step integer NOT NULL,
    total integer NOT NULL,
    preview bytea,
    preview_step integer,
    sent_at double precision NOT NULL,
    mask bytea,
    mask_preview bytea,
    mask_step integer
);
-- A database made before the mask columns gains them. Only then: ALTER takes an exclusive lock
-- that would queue every progress write behind any open transaction, at each worker's start.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'faraday_progress'
                   AND column_name = 'mask_step') THEN
        ALTER TABLE faraday_progress ADD COLUMN IF NOT EXISTS mask bytea,
            ADD COLUMN IF NOT EXISTS mask_preview bytea,
            ADD COLUMN IF NOT EXISTS mask_step integer;
    END IF;
END
$$;
CREATE TABLE IF NOT EXISTS faraday_results (
    pj_id bigint NOT NULL,
    rank integer NOT NULL,
    score double precision NOT NULL,
    seed bigint NOT NULL,
    png bytea NOT NULL,
    PRIMARY KEY (pj_id, rank)
);
CREATE TABLE IF NOT EXISTS faraday_outcomes (
    pj_id bigint PRIMARY KEY,
    queue text NOT NULL,
    job_id bigint NOT NULL,
    status text NOT NULL,
    error text,
    step integer,
    total integer,
    seconds double precision NOT NULL DEFAULT 0,
    preview bytea
);
CREATE TABLE IF NOT EXISTS faraday_workers (
    worker_id bigint PRIMARY KEY,
    queue text NOT NULL,
    name text NOT NULL
);
CREATE TABLE IF NOT EXISTS faraday_bots (
    queue text PRIMARY KEY,
    owner text NOT NULL,
    heartbeat timestamptz NOT NULL DEFAULT now()
);
"""


def channel(queue: str) -> str:
    """The NOTIFY channel of a queue (payload ``p:<pj_id>`` for progress, ``o:<pj_id>`` for an
    outcome)."""
    return f"faraday_{queue}"


def listen_sql(queue: str) -> str:
    # Queue names are validated to letters, digits, '_' and '-'; quoted for the '-'.
    return f'LISTEN "{channel(queue)}"'


def procrastinate_schema_present(row: Any) -> bool:
    return bool(row and row[0])


PROCRASTINATE_PRESENT_SQL = "SELECT to_regclass('public.procrastinate_jobs') IS NOT NULL"
