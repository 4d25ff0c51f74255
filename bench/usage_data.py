"""Synthetic usage events for the benchmarks (bench/aggregate.py, bench/dashboards.py).

Events are written with COPY in created_at order, as the gateway appends them, and look like
gateway rows: prices copied onto the event, cost stamped, mostly successes, a few estimated
token counts, log-normal latencies. Who sends them (workspace, key, deployment) is `route()`,
which each benchmark shapes to the world it built.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COLUMNS = (
    "request_id, created_at, workspace_id, api_key_id, deployment_id, model, endpoint, prompt_tokens, completion_tokens, "
    "total_tokens, estimated, status_code, error_code, aborted, streamed, is_test_call, latency_ms, "
    "input_price_per_million, output_price_per_million, currency, cost"
)

# (deployment id, model name, input price, output price), prices in cents per million tokens.
Deployment = tuple[int, str, int, int]


def recreate_database(server: str, name: str, *, prefix: str) -> None:
    """Drop and create a benchmark database; refuses any name that is not the benchmark's own."""
    import psycopg

    if not name.startswith(prefix):
        raise SystemExit(f"refusing to drop a database whose name does not start with {prefix}")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(server: str, name: str, *, var_dir: str = "bench") -> None:
    os.environ["DATABASE_URL"] = f"{server}/{name}"
    os.environ.setdefault("GATEHOUSE_VAR_DIR", str(ROOT / "var" / var_dir))
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()


class Traffic:
    """Synthetic gateway traffic: a few busy workspaces and a long tail, mostly successes."""

    def __init__(self, world, seed: int = 1):
        self.rng = random.Random(seed)
        self.workspaces, self.keys, self.deployments = world
        self.cum_weights = list(itertools.accumulate(1 / (i + 1) for i in range(len(self.workspaces))))
        self.serial = 0
        self.prefix = "bench"

    def route(self) -> tuple[int, int, Deployment]:
        """(workspace id, key id, deployment) of the next event: Zipf-weighted workspaces, any of their keys and deployments."""
        ws = self.rng.choices(self.workspaces, cum_weights=self.cum_weights)[0]
        return ws, self.rng.choice(self.keys[ws]), self.rng.choice(self.deployments[ws])

    def line(self, at: datetime) -> str:
        rng = self.rng
        ws, key, (dep_id, model, inp, out) = self.route()
        prompt, completion = rng.randrange(1, 4000), (0 if out == 0 else rng.randrange(0, 1200))
        status = 200 if rng.random() < 0.97 else rng.choice((429, 500, 502))
        nanos = (prompt * inp + completion * out) * 10  # cents per million → nanos per token
        self.serial += 1
        return (
            f"{self.prefix}-{self.serial}\t{at.isoformat()}\t{ws}\t{key}\t{dep_id}\t{model}\tchat.completions\t"
            f"{prompt}\t{completion}\t{prompt + completion}\t{'t' if rng.random() < 0.02 else 'f'}\t{status}\t\tf\tf\tf\t"
            f"{int(rng.lognormvariate(6, 0.8))}\t{inp / 100:.2f}\t{out / 100:.2f}\tUSD\t{nanos // 10**9}.{nanos % 10**9:09d}\n"
        )

    def copy(self, conn, times: Iterable[datetime]) -> None:
        with conn.cursor() as cur, cur.copy(f"COPY usage_usageevent ({COLUMNS}) FROM STDIN") as copy:
            chunk = []
            for at in times:
                chunk.append(self.line(at))
                if len(chunk) == 20_000:
                    copy.write("".join(chunk))
                    chunk = []
            if chunk:
                copy.write("".join(chunk))
