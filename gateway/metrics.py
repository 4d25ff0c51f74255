"""Prometheus metrics for the gateway (served at /metrics to holders of METRICS_TOKEN only).

With several worker processes set PROMETHEUS_MULTIPROC_DIR (an empty directory) so /metrics
reports the sum over all workers instead of whichever worker answered the scrape.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("gatehouse_gateway_requests", "Gateway requests by status and deployment", ["status", "model"])
LATENCY = Histogram("gatehouse_gateway_request_seconds", "Time to the end of the response", ["model"], buckets=LATENCY_BUCKETS)
# The gateway's own time per request (wall time minus the upstream's, gateway/timing.py), per API endpoint.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
OVERHEAD = Histogram(
    "gatehouse_gateway_overhead_seconds",
    "The gateway's own time per request: to the end of the response, minus the time spent waiting on the upstream",
    ["endpoint"],
    buckets=OVERHEAD_BUCKETS,
)
TTFT = Histogram("gatehouse_gateway_ttft_seconds", "Time to the first streamed chunk", ["model"], buckets=LATENCY_BUCKETS)
UPSTREAM_ERRORS = Counter("gatehouse_gateway_upstream_errors", "Upstream failures by kind", ["model", "kind"])
REFUSALS = Counter("gatehouse_gateway_limiter_refusals", "Requests refused by the limiter", ["reason"])
REFUSED = Counter(
    "gatehouse_gateway_refused",
    "Requests answered with an error, by status, code and whether the key was known (known keys also get a usage event)",
    ["status", "code", "key"],
)
REFUSALS_UNRECORDED = Counter("gatehouse_gateway_refusal_events_unwritten", "Refusals of known keys whose usage event could not be written")
DB_QUERIES = Counter("gatehouse_gateway_db_queries", "Database statements the gateway issued, by purpose", ["kind"])
TOKENS = Counter("gatehouse_gateway_tokens", "Tokens metered", ["model", "kind"])
USAGE_SPOOLED = Counter("gatehouse_gateway_usage_spooled", "Usage events written to the local spool because the database did not take them")
USAGE_REPLAYED = Counter("gatehouse_gateway_usage_replayed", "Spooled usage events replayed into the database")
USAGE_UNRECORDED = Counter("gatehouse_gateway_usage_unrecorded", "Usage events neither the database nor the spool took (503)")
# Gauges: summed (depth, rejected) or maxed (age) over live processes under PROMETHEUS_MULTIPROC_DIR.
SPOOL_DEPTH = Gauge("gatehouse_gateway_usage_spool_depth", "Usage events waiting in local spools", multiprocess_mode="livesum")
SPOOL_OLDEST = Gauge(
    "gatehouse_gateway_usage_spool_oldest_seconds", "Age of the oldest usage event waiting in a local spool", multiprocess_mode="livemax"
)
SPOOL_REJECTED = Gauge(
    "gatehouse_gateway_usage_spool_rejected",
    "Spooled usage events the database refused (kept aside in the spool file)",
    multiprocess_mode="livesum",
)
# Per replica (label: host:port of a configured replica, so the label set is bounded by configuration).
REPLICA_REQUESTS = Counter("gatehouse_gateway_replica_requests", "Upstream exchanges per replica by outcome", ["replica", "outcome"])
REPLICA_INFLIGHT = Gauge("gatehouse_gateway_replica_inflight", "Requests in flight per replica", ["replica"], multiprocess_mode="livesum")
REPLICA_EJECTIONS = Counter("gatehouse_gateway_replica_ejections", "Passive ejections per replica", ["replica"])
REPLICA_RETRIES = Counter("gatehouse_gateway_replica_retries", "Requests retried elsewhere after this replica failed", ["replica"])


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # only under several workers (PROMETHEUS_MULTIPROC_DIR)

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
