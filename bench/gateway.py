"""Gateway benchmark: direct-to-upstream vs through the gateway, measured with wrk on loopback.

    make bench                       # or: python bench/gateway.py --workers 2 --duration 10
    python bench/gateway.py --profile   # also py-spy one gateway worker and print where the time goes

Starts the demo model server and the gateway (uvicorn, N workers) as separate processes, on
PostgreSQL and Redis (DATABASE_URL / REDIS_URL; it refuses the embedded default), with every
check on: the bench key has an IP allowlist, a TPM limit and a yearly limit, and every request
writes its usage event. wrk drives 1 and 32 connections, chat completions non-streaming and
streaming, embeddings (/v1/embeddings, an embedding deployment) and the Responses API
(/v1/responses, translated by the gateway to a chat call; "direct" is the same chat call sent
straight to the upstream) and non-streamed chat to a deployment of --replicas upstream processes
(the "replicas" mode), for a bounded time each; then --streams slow streams held open at once
(--hold seconds each) for the gateway's memory per open stream and the time to first token it adds; a Lua script posts the body and reports p50/p99 from wrk's own histogram.
At the end it checks that the gateway wrote exactly one usage event per answered request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
UPSTREAM_KEY = "bench-upstream-key"

LUA = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
%(auth)s
done = function(summary, latency, requests)
  io.write(string.format('BENCH {"requests": %%d, "duration_us": %%d, "non2xx": %%d, "errors": %%d, "p50": %%d, "p99": %%d, "mean": %%f}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for {url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def start(args: list[str], env: dict, log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def ensure_database(url: str) -> None:
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(url.replace("postgres://", "postgresql://", 1))
    name, info["dbname"] = info["dbname"], "postgres"
    with psycopg.connect(**info, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_data(env: dict, upstream: str, replica_urls: list[str]) -> tuple[str, str, str, int, str]:
    script = f"""
import uuid
from console.audit import Actor
from console.services import workspace_create
from tests.factories import make_deployment, make_key
slug = "bench-" + uuid.uuid4().hex[:8]
ws = workspace_create(name="Benchmark", slug=slug, actor=Actor.system("bench"))
d = make_deployment(ws, base_url="{upstream}/v1", upstream_api_key="{UPSTREAM_KEY}", upstream_model="gatehouse-demo")
e = make_deployment(ws, base_url="{upstream}/v1", upstream_api_key="{UPSTREAM_KEY}", upstream_model="gatehouse-demo", kind="embedding", output_price="0")
key, plaintext = make_key(ws, all_models=True, tpm_limit=2_000_000_000, yearly_token_limit=10**15, ip_allowlist=["127.0.0.0/8"])
from deployments.services import deployment_create, replica_add
urls = {replica_urls!r}
r = deployment_create(workspace=ws, actor=Actor.system("bench"), name="Replicas", model_id=slug + "-replicas",
    upstream_base_url=urls[0] + "/v1", upstream_api_key="{UPSTREAM_KEY}", upstream_model="gatehouse-demo")
for url in urls[1:]:
    replica_add(deployment=r, actor=Actor.system("bench"), base_url=url + "/v1", api_key="{UPSTREAM_KEY}")
print(d.model_id, e.model_id, plaintext, key.id, r.model_id)
"""
    subprocess.run([PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run([PYTHON, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    model, embedding_model, key, key_id, replicas_model = out.stdout.split()[-5:]
    return model, embedding_model, key, int(key_id), replicas_model


def count_events(env: dict, key_id: int) -> int:
    script = f"from usage.models import UsageEvent; print(UsageEvent.objects.filter(api_key_id={key_id}).count())"
    out = subprocess.run([PYTHON, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1])


def wrk(url: str, script: Path, connections: int, duration: int) -> dict:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    )
    line = next((line for line in out.stdout.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out.stdout}\n{out.stderr}")
    result = json.loads(line[6:])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def median_of(runs: list[dict]) -> dict:
    """Each figure's median over repeated runs (a noisy neighbour spoils one run, not the table)."""
    import statistics

    merged = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
    merged.update(
        non2xx=sum(r["non2xx"] for r in runs),
        errors=sum(r["errors"] for r in runs),
        rps_min=min(r["rps"] for r in runs),
        rps_max=max(r["rps"] for r in runs),
    )
    return merged


# Prompts: the short default, and ~4 KB mixing prose, code, JSON and CJK text (mode
# non-streaming-4k), to show what counting prompt tokens with the real tokenizer costs.
PROMPTS = {
    "short": "Say hello to the benchmark.",
    "4k": (
        "Summarise this for a colleague. "
        + "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n" * 12
        + '{"user": {"id": 12345, "tags": ["a", "b"], "active": true}}\n' * 12
        + "東京は日本の首都です。人口は約1400万人です。" * 24
        + "The quick brown fox jumps over the lazy dog. " * 24
    ),
}


def tokenizer_cost(prompt: str) -> tuple[int, float]:
    """Prompt tokens and microseconds per count, as the gateway counts a chat body (timed in a child
    process: this script's own name would shadow the gateway package here)."""
    script = """
import json, sys, time
from gateway.tokenizer import count_chat
payload = {"messages": [{"role": "user", "content": sys.stdin.read()}]}
count_chat(payload)  # load the encoding first
runs = 500
started = time.perf_counter()
for _ in range(runs):
    tokens = count_chat(payload)
print(json.dumps([tokens, (time.perf_counter() - started) / runs * 1e6]))
"""
    out = subprocess.run([PYTHON, "-c", script], cwd=ROOT, input=prompt, capture_output=True, text=True, check=True)
    tokens, micros = json.loads(out.stdout.splitlines()[-1])
    return tokens, micros


def body(model: str, stream: bool, prompt: str = "short") -> str:
    payload = {"model": model, "messages": [{"role": "user", "content": PROMPTS[prompt]}], "max_tokens": 32}
    if stream:
        payload["stream"] = True
    return json.dumps(payload)


# mode -> (path through the gateway, path straight to the upstream); bodies come from mode_body.
MODE_PATHS = {
    "non-streaming": ("/v1/chat/completions", "/v1/chat/completions"),
    "non-streaming-4k": ("/v1/chat/completions", "/v1/chat/completions"),
    "streaming": ("/v1/chat/completions", "/v1/chat/completions"),
    "embeddings": ("/v1/embeddings", "/v1/embeddings"),
    "responses": ("/v1/responses", "/v1/chat/completions"),
    # Non-streamed chat to a deployment with --replicas replicas (direct: one of those upstreams).
    "replicas": ("/v1/chat/completions", "/v1/chat/completions"),
}


def mode_body(mode: str, model: str, direct: bool) -> str:
    if mode == "embeddings":
        return json.dumps({"model": model, "input": ["Say hello to the benchmark.", "A second input."], "encoding_format": "float"})
    if mode == "responses" and not direct:
        return json.dumps({"model": model, "input": "Say hello to the benchmark.", "max_output_tokens": 32})
    if mode == "non-streaming-4k":
        return body(model, False, "4k")
    return body(model, mode == "streaming")


def profile_summary(raw: Path, top: int = 25) -> str:
    """Collapsed stacks → share of samples per function (self) and per frame on the stack (total)."""
    own, total, samples = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[_short(frames[-1])] += n
        for frame in set(_short(f) for f in frames):
            total[frame] += n
    lines = [f"{samples} samples", "", "self %  function", "------  --------"]
    lines += [f"{100 * n / samples:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "total %  function (time on the stack)", "-------  --------"]
    lines += [f"{100 * n / samples:5.1f}%   {name}" for name, n in total.most_common(top + 15)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"; keep function and the file's tail.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    parts = Path(path).parts
    tail = "/".join(parts[-2:]) if parts else where
    return f"{name} ({tail})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--upstream-workers", type=int, default=1)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (bounded)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="measured runs per cell; the table shows each figure's median")
    parser.add_argument("--connections", default="1,32")
    parser.add_argument("--modes", default="non-streaming,streaming,embeddings,responses,replicas")
    parser.add_argument("--replicas", type=int, default=3, help="upstream processes behind the 'replicas' mode's deployment")
    parser.add_argument("--streams", type=int, default=2000, help="slow streams held open at once in the streams row (0: skip)")
    parser.add_argument("--hold", type=int, default=30, help="seconds each of those streams lasts")
    parser.add_argument("--profile", action="store_true", help="py-spy one gateway worker during a 32-connection run of the first mode")
    parser.add_argument("--access-log", default="1", help="GATEWAY_ACCESS_LOG for the gateway (default on)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:NAME=VALUE[,NAME=VALUE]",
        help="also measure a gateway started with this environment, in the same cells as the default one "
        "(e.g. commit-first:GATEWAY_USAGE_COMMIT_BEFORE_ANSWER=1 or httpx:GATEWAY_UPSTREAM_CLIENT=httpx); "
        "LABEL@/path runs that checkout's code instead (e.g. main@/work/main: for before/after in one run); repeatable",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="GATEWAY_STAGE_TIMING on: print the median wall and CPU time of each gateway stage at 1 connection (from the access log)",
    )
    parser.add_argument(
        "--no-spool",
        dest="spool",
        action="store_false",
        help="skip the spool rows (a second gateway whose database is cut after warm-up, so usage events go to the local spool)",
    )
    args = parser.parse_args()

    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    env = dict(os.environ)
    if not env.get("DATABASE_URL", "").startswith("postgres") or not env.get("REDIS_URL"):
        raise SystemExit("The benchmark runs on PostgreSQL and Redis: set DATABASE_URL=postgres://... and REDIS_URL=redis://...")
    env.setdefault("SECRET_KEY", "bench-secret-key-" + "x" * 50)
    env.setdefault("API_KEY_PEPPER", "bench-pepper-" + "y" * 32)
    env.setdefault("UPSTREAM_ALLOWED_NETWORKS", "public,private,127.0.0.1/32")  # the demo upstream is on loopback
    env.update(
        DJANGO_SETTINGS_MODULE="console.settings",
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        GATEHOUSE_HTTPS="0",
        LOG_LEVEL="INFO",
        GATEWAY_ACCESS_LOG=args.access_log,
    )
    if args.stages:
        env["GATEWAY_STAGE_TIMING"] = "1"
        if args.access_log != "1":
            raise SystemExit("--stages reads the access log: keep --access-log 1")
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    ensure_database(env["DATABASE_URL"])
    workdir = Path(tempfile.mkdtemp(prefix="gatehouse-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        demo_port, gw_port = free_port(), free_port()
        demo = start(
            [
                PYTHON,
                "-m",
                "deployments.demo_model",
                "--port",
                str(demo_port),
                "--api-key",
                UPSTREAM_KEY,
                "--workers",
                str(args.upstream_workers),
            ],
            env,
            workdir / "demo.log",
        )
        procs.append(demo)
        upstream = f"http://127.0.0.1:{demo_port}"
        wait_http(upstream + "/healthz", demo)
        replica_urls = [upstream]
        for _ in range(args.replicas - 1):
            port = free_port()
            extra = start(
                [PYTHON, "-m", "deployments.demo_model", "--port", str(port), "--api-key", UPSTREAM_KEY],
                env,
                workdir / f"demo-{port}.log",
            )
            procs.append(extra)
            replica_urls.append(f"http://127.0.0.1:{port}")
            wait_http(replica_urls[-1] + "/healthz", extra)
        model, embedding_model, key, key_id, replicas_model = setup_data(env, upstream, replica_urls)
        gateway = start_gateway(gw_port, args.workers, env, workdir / "gateway.log")
        procs.append(gateway)
        gw = f"http://127.0.0.1:{gw_port}"
        wait_http(gw + "/v1/models", gateway)
        # target -> (base URL, log file); "direct" has no log
        targets: dict[str, tuple[str, Path | None]] = {"direct": (upstream, None), "gateway": (gw, workdir / "gateway.log")}
        target_procs = {"direct": demo, "gateway": gateway}
        for variant in args.variant:
            label, _, assignments = variant.partition(":")
            label, _, tree = label.partition("@")  # label@/path: that checkout's code (e.g. main, for before/after)
            extra = dict(item.split("=", 1) for item in assignments.split(",") if item)
            port, log = free_port(), workdir / f"gateway-{label}.log"
            proc = start_gateway(port, args.workers, {**env, **extra}, log, cwd=Path(tree) if tree else ROOT)
            procs.append(proc)
            wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
            targets[label] = (f"http://127.0.0.1:{port}", log)
            target_procs[label] = proc
        stage_rows: list[tuple[str, str, dict]] = []

        results = []
        scripts_by_mode: dict[str, dict[str, Path]] = {}
        load_before = os.getloadavg()
        answered_through_gateway = 0
        in_flight_bound = 0  # requests wrk abandons at the end of a run may still complete (and be metered)
        for mode in args.modes.split(","):
            scripts = {}
            for target in ("direct", "gateway"):
                token = UPSTREAM_KEY if target == "direct" else key
                called = (
                    "gatehouse-demo"
                    if target == "direct"
                    else embedding_model
                    if mode == "embeddings"
                    else replicas_model
                    if mode == "replicas"
                    else model
                )
                path = workdir / f"{mode}-{target}.lua"
                path.write_text(
                    LUA
                    % {
                        "body": mode_body(mode, called, direct=target == "direct"),
                        "auth": f'wrk.headers["Authorization"] = "Bearer {token}"',
                    }
                )
                scripts[target] = path
            scripts_by_mode[mode] = scripts
            for connections in [int(c) for c in args.connections.split(",")]:
                row = {"mode": mode, "connections": connections}
                for target, (base, log) in targets.items():
                    script = scripts["direct" if target == "direct" else "gateway"]
                    url = base + MODE_PATHS[mode][target == "direct"]
                    runs = [wrk(url, script, connections, args.warmup)]
                    log_from = log.stat().st_size if log is not None else 0
                    cpu_from = cpu_seconds(target_procs[target].pid)
                    runs += [wrk(url, script, connections, args.duration) for _ in range(args.repeat)]
                    # The server's own CPU per answered request: less sensitive to the machine's
                    # other load than latency (the gateway's includes its uvicorn, not the upstream's).
                    answered = sum(r["requests"] for r in runs[1:])
                    cpu_per_request = (cpu_seconds(target_procs[target].pid) - cpu_from) / max(1, answered) * 1e6
                    if args.stages and log is not None and connections == 1:
                        stage_rows.append((mode, target, stage_medians(log, log_from)))
                    if target != "direct":
                        answered_through_gateway += sum(r["requests"] - r["non2xx"] for r in runs)
                        in_flight_bound += len(runs) * connections
                    measured = median_of(runs[1:])
                    measured["cpu_us"] = cpu_per_request
                    row[target] = measured
                    print(
                        f"  {mode:14} c={connections:<3} {target:8} {measured['rps']:8.0f} req/s  p50 {measured['p50'] / 1000:7.2f} ms"
                        f"  p99 {measured['p99'] / 1000:7.2f} ms  non2xx {measured['non2xx']} errors {measured['errors']}"
                        f"  CPU {cpu_per_request:5.0f} µs/req  (req/s over {args.repeat} runs: {measured['rps_min']:.0f}-{measured['rps_max']:.0f})",
                        flush=True,
                    )
                results.append(row)

        streams_text = None
        if args.streams:
            streams_text = streams_phase(args, gw, upstream, gateway, model, key)
            answered_through_gateway += args.streams

        if args.spool and "non-streaming" in scripts_by_mode:
            spooled_rows, spool_answered, spool_in_flight = spool_phase(args, env, workdir, procs, scripts_by_mode, results, model, key)
            answered_through_gateway += spool_answered
            in_flight_bound += spool_in_flight
            results.extend(spooled_rows)

        profile_text = None
        if args.profile:
            profile_stream = args.modes.split(",")[0] == "streaming"
            profile_text = run_profile(gw, scripts_for_profile(workdir, model, key, profile_stream), gateway, args, profile_stream)
            answered_through_gateway = None  # wrk under py-spy is not counted precisely

        load_after = os.getloadavg()
        time.sleep(1)
        events = count_events(env, key_id)
        print()
        # Other work on the machine skews every number: say how busy it was.
        print(
            f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}; {os.cpu_count()} CPUs; "
            f"gateway workers {args.workers}, upstream workers {args.upstream_workers}, {args.duration} s x {args.repeat} runs per cell"
        )
        print(table(results))
        if stage_rows:
            print()
            print(stage_table(stage_rows))
        if streams_text:
            print()
            print(streams_text)
        print()
        for name, prompt in PROMPTS.items():
            tokens, micros = tokenizer_cost(prompt)
            print(f"prompt token count ({name} prompt, {len(prompt)} chars, {tokens} tokens): {micros:.0f} µs per request in-process")
        print()
        if answered_through_gateway is not None:
            ok = answered_through_gateway <= events <= answered_through_gateway + in_flight_bound
            print(
                f"usage events written: {events}; 2xx answers wrk counted through the gateway: {answered_through_gateway} "
                f"(+ at most {in_flight_bound} abandoned in flight) -> {'OK' if ok else 'MISMATCH'}"
            )
        else:
            print(f"usage events written: {events}")
        if profile_text:
            print()
            print(profile_text)
    finally:
        for proc in reversed(procs):
            stop(proc)


def cpu_seconds(root_pid: int) -> float:
    """CPU time (user + system) used so far by a process and its children (uvicorn's workers)."""
    pids = [root_pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{root_pid}/task/{root_pid}/children").read_text().split()]
    except OSError:
        pass
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(root_pid: int) -> int:
    """Resident memory of a process and its children (uvicorn's workers), from /proc."""
    total = 0
    pids = [root_pid]
    try:
        children = Path(f"/proc/{root_pid}/task/{root_pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _has_token(event: bytes) -> bool:
    if not event.startswith(b"data: {"):
        return False
    try:
        choices = json.loads(event[6:]).get("choices") or []
    except ValueError:
        return False
    return any((c.get("delta") or {}).get("content") for c in choices)


async def _slow_stream(base: str, token: str, payload: bytes, ttfts: list, failures: list, opened: list) -> None:
    import asyncio

    host, port = base.removeprefix("http://").split(":")
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: " + host.encode() + b"\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + token.encode() + b"\r\ncontent-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )
        status = await reader.readline()
        if b" 200 " not in status:
            raise ConnectionError(status.decode(errors="replace").strip())
        buffer, first = b"", False
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            buffer += chunk
            *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
            if not first and any(_has_token(e.split(b"\n")[-1]) for e in events):
                first = True
                ttfts.append(time.perf_counter() - started)
                opened.append(1)
            if any(b"[DONE]" in e for e in events):
                break
        writer.close()
        if not first:
            raise ConnectionError("no token before the stream ended")
    except Exception as exc:
        failures.append(type(exc).__name__ + ": " + str(exc)[:80])


def streams_phase(args, gw: str, upstream: str, gateway: subprocess.Popen, model: str, key: str) -> str:
    """`args.streams` slow streams open at once (the upstream sends a token a second for
    `args.hold` s), straight to the upstream and then through the gateway: the gateway's RSS per
    open stream and the time to first token it adds."""
    import asyncio
    import statistics

    per_token_ms = 1000
    tokens = max(2, args.hold * 1000 // per_token_ms)

    def payload(called: str) -> bytes:
        return json.dumps(
            {
                "model": called,
                "messages": [{"role": "user", "content": "Stream slowly."}],
                "stream": True,
                "max_tokens": tokens,
                "metadata": {"demo_chunk_delay_ms": str(per_token_ms), "demo_reply_tokens": str(tokens)},
            }
        ).encode()

    async def run(base: str, token: str, body: bytes, measure_rss: bool):
        ttfts, failures, opened = [], [], []
        rss_before = rss_bytes(gateway.pid) if measure_rss else 0
        tasks = []
        # Opened over ~5 s (a burst of 2,000 connects would measure the accept queue, not the gateway).
        for i in range(args.streams):
            tasks.append(asyncio.ensure_future(_slow_stream(base, token, body, ttfts, failures, opened)))
            if i % 100 == 99:
                await asyncio.sleep(0.25)
        peak = 0
        while not all(t.done() for t in tasks):
            await asyncio.sleep(1)
            if measure_rss and len(opened) >= args.streams - len(failures):
                peak = max(peak, rss_bytes(gateway.pid))
        await asyncio.gather(*tasks)
        return ttfts, failures, rss_before, peak

    direct = asyncio.run(run(upstream, UPSTREAM_KEY, payload("gatehouse-demo"), False))
    through = asyncio.run(run(gw, key, payload(model), True))
    d_ttft, g_ttft = direct[0], through[0]
    if not d_ttft or not g_ttft:
        return f"streams row: no stream got a first token (direct failures {direct[1][:3]}, gateway failures {through[1][:3]})"
    q = lambda values, p: sorted(values)[min(len(values) - 1, int(len(values) * p))]  # noqa: E731
    rss_per_stream = (through[3] - through[2]) / max(1, len(g_ttft))
    return (
        "| streams held | hold | direct TTFT p50 / p99 | gateway TTFT p50 / p99 | added TTFT p50 / p99 | gateway RSS before → with all open "
        "| RSS per open stream | failed (direct / gateway) |\n|---|---|---|---|---|---|---|---|\n"
        f"| {args.streams} | {args.hold} s | {statistics.median(d_ttft) * 1000:.1f} / {q(d_ttft, 0.99) * 1000:.1f} ms "
        f"| {statistics.median(g_ttft) * 1000:.1f} / {q(g_ttft, 0.99) * 1000:.1f} ms "
        f"| {(statistics.median(g_ttft) - statistics.median(d_ttft)) * 1000:+.1f} / {(q(g_ttft, 0.99) - q(d_ttft, 0.99)) * 1000:+.1f} ms "
        f"| {through[2] / 2**20:.0f} → {through[3] / 2**20:.0f} MiB | {rss_per_stream / 1024:.1f} KiB "
        f"| {len(direct[1])} / {len(through[1])} |"
    )


def spool_phase(args, env: dict, workdir: Path, procs: list, scripts_by_mode: dict, results: list, model: str, key: str):
    """The spool path: a second gateway reaches PostgreSQL through tests/tcp_proxy.py; once every
    worker has the key cached the proxy cuts the database off, so every usage event is fsynced
    to the local spool instead. Then the database comes back and the spool drains (timed)."""
    import httpx
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(env["DATABASE_URL"].replace("postgres://", "postgresql://", 1))
    proxy = subprocess.Popen(
        [PYTHON, "-m", "tests.tcp_proxy", "--target-port", str(info.get("port") or 5432)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    procs.append(proxy)
    proxy_port = int(proxy.stdout.readline().split()[1])
    auth = f"{info.get('user') or 'postgres'}" + (f":{info['password']}" if info.get("password") else "")
    spool_dir = workdir / "spool"
    spool_env = dict(env, DATABASE_URL=f"postgres://{auth}@127.0.0.1:{proxy_port}/{info['dbname']}", GATEWAY_SPOOL_DIR=str(spool_dir))
    port = free_port()
    gateway = start_gateway(port, args.workers, spool_env, workdir / "gateway-spool.log")
    procs.append(gateway)
    gw = f"http://127.0.0.1:{port}"
    wait_http(gw + "/v1/models", gateway)
    for _ in range(20 * args.workers):  # every worker loads the key while the database is there
        httpx.get(gw + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10)
    # Sequential requests can all land on one worker when the machine is busy; 32 connections
    # for a second reach every worker (one that never saw the key cannot check it once the
    # database is cut, and answers 503 until it is back).
    warm = wrk(gw + "/v1/chat/completions", scripts_by_mode["non-streaming"]["gateway"], 32, 1)

    def signal_proxy(sig: int) -> None:
        proxy.send_signal(sig)
        proxy.stdout.readline()

    signal_proxy(signal.SIGUSR1)
    rows, answered, in_flight = [], warm["requests"] - warm["non2xx"], 32
    mode = "non-streaming"
    by_conns = {row["connections"]: row for row in results if row["mode"] == mode}
    for connections in [int(c) for c in args.connections.split(",")]:
        url = gw + "/v1/chat/completions"
        runs = [wrk(url, scripts_by_mode[mode]["gateway"], connections, args.warmup)]
        runs += [wrk(url, scripts_by_mode[mode]["gateway"], connections, args.duration) for _ in range(args.repeat)]
        answered += sum(r["requests"] - r["non2xx"] for r in runs)
        in_flight += len(runs) * connections
        measured = median_of(runs[1:])
        print(
            f"  {mode} (database away, usage -> spool) c={connections:<3} {measured['rps']:8.0f} req/s  p50 {measured['p50'] / 1000:7.2f} ms"
            f"  p99 {measured['p99'] / 1000:7.2f} ms  non2xx {measured['non2xx']} errors {measured['errors']}",
            flush=True,
        )
        direct = by_conns[connections]["direct"] if connections in by_conns else measured
        rows.append({"mode": f"{mode}, database away → spool", "connections": connections, "direct": direct, "gateway": measured})
    waiting = spool_depth(spool_dir)
    signal_proxy(signal.SIGUSR2)
    restored = time.monotonic()
    while spool_depth(spool_dir) and time.monotonic() - restored < 300:
        time.sleep(0.2)
    print(f"  spool: {waiting} events waiting when the database came back, drained in {time.monotonic() - restored:.1f} s", flush=True)
    return rows, answered, in_flight


def spool_depth(spool_dir: Path) -> int:
    import sqlite3

    total = 0
    for path in spool_dir.glob("usage-*.spool"):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                total += conn.execute("SELECT count(*) FROM events").fetchone()[0]
        except sqlite3.Error:
            continue
    return total


def scripts_for_profile(workdir: Path, model: str, key: str, stream: bool) -> Path:
    path = workdir / "profile.lua"
    path.write_text(LUA % {"body": body(model, stream), "auth": f'wrk.headers["Authorization"] = "Bearer {key}"'})
    return path


def run_profile(gw: str, script: Path, gateway: subprocess.Popen, args, stream: bool) -> str:
    children = subprocess.run(["pgrep", "-P", str(gateway.pid)], capture_output=True, text=True).stdout.split()
    workers = [pid for pid in children if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text(errors="ignore")]
    target = workers[0] if workers else str(gateway.pid)
    raw = script.with_suffix(".collapsed")
    spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    if not Path(spy).exists():
        return "py-spy is not installed (pip install -r requirements-dev.txt)"
    profiler = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            target,
            "--format",
            "raw",
            "--output",
            str(raw),
            "--duration",
            str(args.duration),
            "--rate",
            "250",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1)
    wrk(gw + "/v1/chat/completions", script, 32, args.duration)
    profiler.wait(args.duration + 30)
    if not raw.exists():
        return f"py-spy produced no profile: {profiler.stderr.read().decode()[-500:]}"
    mode = "streaming" if stream else "non-streaming"
    return f"where the time goes (py-spy, one gateway worker, {mode}, 32 connections)\n" + profile_summary(raw)


def start_gateway(port: int, workers: int, env: dict, log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    return start(
        [PYTHON, "-m", "uvicorn", "console.asgi:application", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        + ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--no-proxy-headers", "--no-server-header"],
        env,
        log,
        cwd,
    )


STAGES = ("auth", "parse", "admission", "upstream_head", "upstream_body", "answer", "metering", "send")


def stage_medians(log: Path, offset: int) -> dict:
    """Median per stage (wall and CPU µs) over the access log lines written since `offset`."""
    import statistics

    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    with log.open("rb") as handle:
        handle.seek(offset)
        for raw in handle:
            line = raw.decode(errors="replace")
            start = line.find("{")
            if " gateway.access " not in line or start < 0:
                continue
            entry = json.loads(line[start:])
            if entry.get("status") != 200 or "stages" not in entry:
                continue
            for name in (*STAGES, "gateway", "upstream"):
                wall = entry["stages"].get(name, 0.0) if name in STAGES else entry[f"{name}_ms"]
                walls.setdefault(name, []).append(wall * 1000)
                if name in STAGES:
                    cpus.setdefault(name, []).append((entry.get("cpu") or {}).get(name, 0.0) * 1000)
    return {
        "requests": len(walls.get("gateway", [])),
        "wall": {name: statistics.median(values) for name, values in walls.items()},
        "cpu": {name: statistics.median(values) for name, values in cpus.items()},
    }


def stage_table(rows: list[tuple[str, str, dict]]) -> str:
    """Where the gateway's time goes at 1 connection: median µs per stage, wall (CPU)."""
    head = "| mode | gateway | requests | " + " | ".join(STAGES) + " | gateway total | upstream |"
    lines = [
        "median µs per request and stage at 1 connection, wall (this thread's CPU) — from the access log (GATEWAY_STAGE_TIMING)",
        head,
        "|" + "---|" * (len(STAGES) + 5),
    ]
    for mode, target, medians in rows:
        wall, cpu = medians["wall"], medians["cpu"]
        if not medians["requests"]:
            continue
        cells = [f"{wall.get(s, 0):.0f} ({cpu.get(s, 0):.0f})" for s in STAGES]
        lines.append(
            f"| {mode} | {target} | {medians['requests']} | " + " | ".join(cells) + f" | {wall['gateway']:.0f} | {wall['upstream']:.0f} |"
        )
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    head = (
        "| mode | conns | direct req/s | direct p50 | direct p99 | gateway | gateway req/s | gateway p50 | gateway p99 "
        "| added p50 | added p99 | req/s ratio | gateway CPU µs/req |"
    )
    lines = [head, "|" + "---|" * 13]
    for row in results:
        d = row["direct"]
        for target, g in row.items():
            if target in ("mode", "connections", "direct"):
                continue
            cpu = f"{g['cpu_us']:.0f}" if "cpu_us" in g else ""  # the spool rows have none
            lines.append(
                f"| {row['mode']} | {row['connections']} | {d['rps']:.0f} | {d['p50'] / 1000:.2f} ms | {d['p99'] / 1000:.2f} ms "
                f"| {target} | {g['rps']:.0f} | {g['p50'] / 1000:.2f} ms | {g['p99'] / 1000:.2f} ms "
                f"| {(g['p50'] - d['p50']) / 1000:+.2f} ms | {(g['p99'] - d['p99']) / 1000:+.2f} ms | {g['rps'] / d['rps']:.2f} | {cpu} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
