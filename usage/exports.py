"""CSV exports of the dashboards: the same report objects the pages render, so the file holds
exactly what is on screen (sections, order, cents, totals).

Each section starts with a header row whose first cell names it, ends with a "total" row where
it has one, and is followed by a blank row.
"""

from __future__ import annotations

from console.models import Workspace
from usage.amounts import amount_text
from usage.selectors import KeyLimit, Statement, UsageReport

# requests = answered + refused: "refused" counts every request answered with an error status
# (refused by the gateway, or failed upstream); "answered" the rest.
METRICS = ("requests", "answered", "refused", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_tokens")


def _metrics(row: dict) -> list:
    values = {**row, "answered": row["requests"] - row["errors"], "refused": row["errors"]}
    return [values[name] for name in METRICS]


def _cost(row: dict) -> str:
    return amount_text(row["cost"], row["cost_cents"])


def _breakdown_name(kind: str, row: dict) -> list:
    if kind == "workspace":
        return [row["workspace__name"], row["workspace__slug"]]
    if kind == "key":
        return [row["api_key__name"] or "No key / deleted", row["api_key__public_id"] or ""]
    if kind == "endpoint":
        return [row["endpoint_label"], row["endpoint"]]
    return [row["deployment__name"] or "No deployment / deleted", row["deployment__public_id"] or ""]


def write_usage_csv(writer, report: UsageReport, workspace: Workspace, limits: list[KeyLimit]) -> None:
    currency = report.currency
    totals = report.totals
    period = "hour" if report.hourly else "day"
    writer.writerow([period, *METRICS, "cost", "currency"])
    for p in report.periods:
        # Hours in the workspace's time zone, with the offset: unambiguous across a DST change.
        label = p["local"].isoformat(timespec="minutes") if report.hourly else p["local"].isoformat()
        writer.writerow([label, *_metrics(p), _cost(p), currency])
    writer.writerow(["total", *_metrics(totals), _cost(totals), currency])

    sections = (
        ("workspace", report.by_workspace),
        ("key", report.by_key),
        ("deployment", report.by_deployment),
        ("endpoint", report.by_endpoint),
    )
    for kind, rows in sections:
        if not rows:
            continue
        writer.writerow([])
        writer.writerow([kind, "id", *METRICS, "cost", "currency", "p95_latency_ms"])
        for r in rows:
            writer.writerow([*_breakdown_name(kind, r), *_metrics(r), _cost(r), currency, _blank_if_none(r["p95_ms"])])
        writer.writerow(["total", "", *_metrics(totals), _cost(totals), currency, _blank_if_none(totals["p95_ms"])])

    if report.errors_by_reason:
        writer.writerow([])
        writer.writerow(["refused by reason", "status", "error_code", "requests"])
        for reason in report.errors_by_reason:
            writer.writerow([reason.text, reason.status_code, reason.error_code, reason.requests])
        writer.writerow(["total", "", "", totals["errors"]])

    if limits:
        writer.writerow([])
        writer.writerow(["key limits", "id", "tpm_limit", "tpm_used_this_minute", "yearly_limit", "year", "yearly_used"])
        for limit in limits:
            key = limit.key
            minute = "" if not key.tpm_limit else ("not available" if limit.tpm_used is None else limit.tpm_used)
            writer.writerow(
                [key.name, key.public_id, key.tpm_limit or "", minute, key.yearly_token_limit or "", limit.year, limit.yearly_used]
            )


def write_statement_csv(writer, st: Statement) -> None:
    writer.writerow(
        [
            "workspace",
            "deployment",
            "model",
            "price_effective_from",
            "input_price_per_million",
            "output_price_per_million",
            "requests",
            "input_tokens",
            "output_tokens",
            "cost",
            "currency",
            "endpoint",  # the API the line's requests came through (last, so older readers keep their columns)
        ]
    )
    for section in st.sections:
        for item in section.items:
            since = " ".join(f"{v:%Y-%m-%d}" for v in item["versions"])
            writer.writerow(
                [
                    section.slug,
                    item["label"],
                    item["model"],
                    since,
                    item["input_price_per_million"],
                    item["output_price_per_million"],
                    item["requests"],
                    item["prompt_tokens"],
                    item["completion_tokens"],
                    item["cost_cents"],
                    item["currency"],
                    item["endpoint"],
                ]
            )
        writer.writerow([section.slug, "subtotal", "", "", "", "", "", "", "", section.total, st.currency, st.endpoint or ""])
    writer.writerow(["total", "", "", "", "", "", "", st.prompt_tokens, st.completion_tokens, st.total, st.currency, st.endpoint or ""])


def _blank_if_none(value) -> object:
    return "" if value is None else value


FLAT_COLUMNS = (
    "workspace",
    "workspace_name",
    "key_id",
    "key_name",
    "deployment_id",
    "deployment_name",
    "model",
    "endpoint",
    *METRICS,
    "cost",
    "cost_exact",
    "currency",
)


def write_flat_usage_csv(writer, rows: list[dict], *, hourly: bool) -> None:
    # The metric columns are METRICS, written inline: _metrics copies each row, a cost on 80k rows.
    """One header row, then one row per day (or hour) × workspace × key × deployment × API, with
    no sections or totals, so spreadsheets and BI tools read it as a table. `cost` is in cents,
    allocated so the column adds up to the page's total; `cost_exact` is the unrounded sum."""
    writer.writerow(["hour" if hourly else "day", *FLAT_COLUMNS])
    for r in rows:
        label = r["local"].isoformat(timespec="minutes") if hourly else r["local"].isoformat()
        writer.writerow(
            [
                label,
                r["workspace_slug"],
                r["workspace_name"],
                r["key_ref"] or "",
                r["key_name"],
                r["deployment_ref"] or "",
                r["deployment_name"],
                r["model_label"],
                r["endpoint"],
                r["requests"],
                r["requests"] - r["errors"],
                r["errors"],
                r["prompt_tokens"],
                r["completion_tokens"],
                r["total_tokens"],
                r["estimated_tokens"],
                f"{r['cost_cents']:.2f}",
                f"{r['cost']:f}",
                r["currency"],
            ]
        )
