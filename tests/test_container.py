"""The container image, built and run: Dockerfile → podman image → web, worker and beat started
from it against the test PostgreSQL and Redis on loopback.

Registry images cannot be pulled here, so scripts/container-image.sh builds the base from Debian
packages (mmdebstrap → podman import) and the image on top (`podman build --isolation chroot`);
both are cached between runs (the base by tag, the rest by podman's layer cache).

Two ways to run it: real containers (`podman run` with runc, the host network, compose.yaml's
read-only root, tmpfs, volumes, secret files, health checks and stop grace periods), and the
image's ENTRYPOINT in a chroot of the mounted read-only image, which also makes a console test
call through the worker. Why `podman run` needs help here: its defaults raise RLIMIT_NOFILE and
RLIMIT_NPROC above this sandbox's hard limits, which takes CAP_SYS_RESOURCE (not granted:
"crun: setrlimit RLIMIT_NOFILE: Operation not permitted"), and crun refuses the host's hybrid
cgroup v1/v2 layout ("cgroups in hybrid mode not supported"); runc with --ulimit values inside
the hard limits works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from django.conf import settings

from tests import gateway_support
from tests.conftest import PASSWORD
from tests.factories import make_deployment
from tests.gateway_support import UPSTREAM_KEY
from tests.prod_support import Browser, Process, csrf_token, database_url, free_port, set_production_password

ROOT = Path(__file__).resolve().parent.parent
IMAGE_TAG = "localhost/gatehouse:test"
TOOLS = ("podman", "mmdebstrap", "chroot", "mount", "umount")

pytestmark = pytest.mark.django_db(transaction=True)
demo = gateway_support.demo  # the demo model server, a live-process fixture on loopback


def _run(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def image() -> dict:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'nothing else'} (make test installs podman and mmdebstrap with apt-get)")
    image_id = _run(str(ROOT / "scripts" / "container-image.sh"), IMAGE_TAG, timeout=1800).splitlines()[-1]
    [inspected] = yaml.safe_load(_run("podman", "image", "inspect", image_id))  # JSON is YAML
    return {"id": image_id, "config": inspected["Config"], "healthcheck": inspected["Healthcheck"]}


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory):
    """The image's root file system, mounted read-only, with what compose.yaml mounts into it."""
    tmp = tmp_path_factory.mktemp("container")
    root = Path(_run("podman", "image", "mount", image["id"]))
    volume, scratch, secrets = tmp / "volume", tmp / "tmp", tmp / "secrets"
    for path in (volume, scratch, secrets):
        path.mkdir()
    uid, gid = (int(part) for part in image["config"]["User"].split(":"))
    os.chown(volume, uid, gid)
    scratch.chmod(0o1777)
    (secrets / "secret_key").write_text(settings.SECRET_KEY + "\n")
    (secrets / "api_key_pepper").write_text(settings.API_KEY_PEPPER + "\n")
    (secrets / "postgres_password").write_text("unused-with-trust-auth\n")
    for path in secrets.iterdir():
        path.chmod(0o444)
    [volume_path] = image["config"]["Volumes"]
    binds = [("proc", root / "proc"), (None, root / "dev"), (volume, root / volume_path.lstrip("/")), (scratch, root / "tmp")]
    binds.append((secrets, root / "run" / "secrets"))
    mounted = []
    try:
        for source, target in binds:
            if source == "proc":
                _run("mount", "-t", "proc", "proc", str(target))
            elif source is None:
                _run("mount", "--rbind", "/dev", str(target))
            else:
                _run("mount", "--bind", str(source), str(target))
            mounted.append(target)
        yield {"root": root, "volume": volume, "tmp": tmp}
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-R", "-l", str(target)], capture_output=True)
        subprocess.run(["podman", "image", "unmount", image["id"]], capture_output=True)


def role_env(image: dict, service: str, port: int) -> list[str]:
    """The image's environment, then compose.yaml's for this service, pointed at the test
    PostgreSQL and Redis on loopback instead of compose's service names."""
    env = dict(item.split("=", 1) for item in image["config"]["Env"])
    compose_env = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][service]["environment"]
    env.update({k: str(v) for k, v in compose_env.items()})
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        ALLOWED_HOSTS="127.0.0.1",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        TRUSTED_PROXIES="",
        HOST="127.0.0.1",
        GATEHOUSE_PORT=str(port),
        UPSTREAM_ALLOWED_NETWORKS="private,127.0.0.1/32",  # the demo upstream is on loopback
    )
    return [f"{k}={v}" for k, v in env.items()]


def in_image(image: dict, rootfs: dict, env: list[str], *command: str) -> list[str]:
    config = image["config"]
    return [
        shutil.which("chroot") or "/usr/sbin/chroot",
        "--userspec",
        config["User"],
        str(rootfs["root"]),
        "/usr/bin/env",
        "-i",
        "-C",
        config["WorkingDir"],
        *env,
        *command,
    ]


def test_image_runs_web_worker_and_beat_serves_a_key_and_stops_cleanly(image, rootfs, world, demo):
    config = image["config"]
    assert config["User"] != "0" and not config["User"].startswith("0:") and config["User"].split(":")[0] != "root"
    entrypoint = config["Entrypoint"]
    port = free_port()
    envs = {service: role_env(image, service, port) for service in ("web", "worker", "beat")}
    logs = rootfs["tmp"]

    web = Process("web", {}, logs / "web.log", argv=in_image(image, rootfs, envs["web"], *entrypoint, *config["Cmd"]))
    worker = beat = None
    try:
        web.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=180)
        assert "Database migrated." in web.output() and "Static files collected" not in web.output()  # built into the image
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()["status"] == "ready"
        worker = Process("worker", {}, logs / "worker.log", argv=in_image(image, rootfs, envs["worker"], *entrypoint, "worker"))
        beat = Process("beat", {}, logs / "beat.log", argv=in_image(image, rootfs, envs["beat"], *entrypoint, "beat"))
        worker.wait_output("ready.", timeout=120)
        beat.wait_output("beat: Starting", timeout=120)

        # Each role's health check, as the image and compose.yaml define it, passes.
        for service in ("web", "worker", "beat"):
            test = image["healthcheck"]["Test"] if service == "web" else None
            command = test[1:] if test else [*entrypoint, "health", service]
            result = subprocess.run(in_image(image, rootfs, envs[service], *command), capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (service, result.stdout, result.stderr)

        # Sign in, create a key in the console, call the gateway with it.
        make_deployment(world.org, base_url=demo.url + "/v1", model_id="@acme/demo", upstream_api_key=UPSTREAM_KEY)
        set_production_password(world.owner, PASSWORD)
        browser = Browser(f"http://127.0.0.1:{port}")
        browser.sign_in(world.owner.username, PASSWORD)
        form = browser.get("/w/acme/secrets/new/")
        assert form.status_code == 200
        created = browser.post(
            "/w/acme/secrets/new/", {"csrfmiddlewaretoken": csrf_token(form.text), "name": "from-image", "all_models": "on"}
        )
        assert created.status_code == 302, created.text[:3000]
        shown = browser.get(created.headers["location"])
        assert shown.status_code == 200, shown.text[:3000]
        key = re.search(r'data-testid="new-key">(gh_live_\w+)<', shown.text).group(1)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "@acme/demo", "messages": [{"role": "user", "content": "Hello from the image"}]},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]

        # A console test call: web → Redis broker → the image's worker → gateway → demo model.
        listing = browser.get("/w/acme/deployments/").text
        detail = re.search(r'href="(/w/acme/deployments/[0-9a-f-]{36}/)"', listing).group(1)
        tab = browser.get(detail + "?tab=test").text
        started = browser.post(detail + "test-calls/", {"csrfmiddlewaretoken": csrf_token(tab), "prompt": "Hello?"})
        poll = re.search(r'hx-get="([^"]+)"', started.text).group(1)
        result = started.text
        deadline = time.monotonic() + 90
        while 'data-status="done"' not in result and 'data-status="failed"' not in result and time.monotonic() < deadline:
            time.sleep(0.5)
            result = browser.get(poll).text
        assert 'data-status="done"' in result, result[-3000:] + worker.output()[-3000:]

        # Stop as an orchestrator does: SIGTERM, within compose.yaml's grace periods.
        services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
        for process, service in ((beat, "beat"), (worker, "worker"), (web, "web")):
            grace = int(services[service]["stop_grace_period"].removesuffix("s"))
            assert process.terminate(timeout=grace) in (0, -15), process.output()[-3000:]
        assert "Finished server process" in web.output()
        assert "Cold shutdown" in worker.output() or "Warm shutdown" in worker.output()
        for process in (web, worker, beat):
            assert key not in process.output() and key[8:30] not in process.output(), process.role
            assert "Traceback" not in process.output(), process.output()[-3000:]
    finally:
        for process in (beat, worker, web):
            if process is not None:
                process.kill()


def test_image_matches_compose_and_carries_no_compiler(image, rootfs):
    config = image["config"]
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    env_names = {item.split("=", 1)[0] for item in config["Env"]}
    for service in ("web", "worker", "beat"):
        assert services[service]["healthcheck"]["test"] == ["CMD", *config["Entrypoint"], "health", service]
        assert services[service]["command"] == [service]
        [volume] = services[service]["volumes"]
        assert volume.split(":")[1] in config["Volumes"]
    assert image["healthcheck"]["Test"] == ["CMD", *config["Entrypoint"], "health", "web"]
    assert config["Cmd"] == services["web"]["command"]
    assert {"GATEHOUSE_VAR_DIR", "STATIC_ROOT", "GATEHOUSE_PORT"} <= env_names
    assert f"{services['web']['environment']['GATEHOUSE_PORT']}/tcp" in config["ExposedPorts"]
    root = rootfs["root"]
    compilers = [
        name for name in ("gcc", "cc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc", "make", "ld") if (root / "usr/bin" / name).exists()
    ]
    assert compilers == []
    assert (root / "app/staticfiles/staticfiles.json").exists()
    assert not (root / "app/tests").exists() and not (root / "app/.git").exists()
    assert not (root / "opt/venv/bin/pip").exists()


# `podman run` with its defaults fails here: it raises RLIMIT_NOFILE/RLIMIT_NPROC above this
# sandbox's hard limits, which needs CAP_SYS_RESOURCE (not granted), and crun refuses the host's
# hybrid cgroup v1/v2 layout. runc with limits inside the hard limits runs real containers.
PODMAN_RUN = ["podman", "--runtime", "runc", "run", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def test_real_containers_run_as_compose_describes_them(image, world, demo, tmp_path):
    """web, worker and beat as real containers (podman run, the host's loopback network): read-only
    root, /tmp as tmpfs, a volume each, secrets as files in /run/secrets, compose.yaml's
    environment and health checks; then `podman stop` with compose's grace periods."""
    if shutil.which("runc") is None:
        pytest.skip("needs runc (apt-get install runc): crun cannot run containers on this host's hybrid cgroups")
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    uid, gid = (int(part) for part in image["config"]["User"].split(":"))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in (("secret_key", settings.SECRET_KEY), ("api_key_pepper", settings.API_KEY_PEPPER), ("postgres_password", "x")):
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o444)
    port = free_port()
    suffix = os.urandom(4).hex()
    names: list[str] = []

    def start(service: str) -> str:
        volume = tmp_path / f"{service}-data"
        volume.mkdir()
        os.chown(volume, uid, gid)
        spec = services[service]
        health = spec["healthcheck"]["test"]
        args = [*PODMAN_RUN, "--detach", "--name", f"gatehouse-{service}-{suffix}", "--network", "host", "--read-only"]
        args += ["--tmpfs", spec["tmpfs"][0], "--volume", f"{volume}:{spec['volumes'][0].split(':')[1]}"]
        for secret in spec["secrets"]:
            args += ["--volume", f"{secrets / secret}:/run/secrets/{secret}:ro"]
        args += ["--health-cmd", json.dumps(health[1:]), "--stop-timeout", spec["stop_grace_period"].removesuffix("s")]
        for item in role_env(image, service, port):
            args += ["--env", item]
        name = f"gatehouse-{service}-{suffix}"
        names.append(name)
        _run(*args, image["id"], *spec["command"], timeout=120)
        return name

    def logs(name: str) -> str:
        result = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=30)
        return result.stdout + result.stderr

    def healthy(name: str) -> bool:
        return subprocess.run(["podman", "--runtime", "runc", "healthcheck", "run", name], capture_output=True, timeout=90).returncode == 0

    try:
        web = start("web")
        deadline = time.monotonic() + 180
        while not healthy(web):
            assert time.monotonic() < deadline, logs(web)[-4000:]
            time.sleep(1)
        worker, beat = start("worker"), start("beat")
        for name, ready in ((worker, "ready."), (beat, "beat: Starting")):
            deadline = time.monotonic() + 120
            while ready not in logs(name):
                assert time.monotonic() < deadline, logs(name)[-4000:]
                time.sleep(1)
        assert healthy(worker) and healthy(beat)

        make_deployment(world.org, base_url=demo.url + "/v1", model_id="@acme/demo", upstream_api_key=UPSTREAM_KEY)
        set_production_password(world.owner, PASSWORD)
        browser = Browser(f"http://127.0.0.1:{port}")
        browser.sign_in(world.owner.username, PASSWORD)
        form = browser.get("/w/acme/secrets/new/")
        created = browser.post(
            "/w/acme/secrets/new/", {"csrfmiddlewaretoken": csrf_token(form.text), "name": "in-a-container", "all_models": "on"}
        )
        assert created.status_code == 302, created.text[:3000]
        shown = browser.get(created.headers["location"])
        key = re.search(r'data-testid="new-key">(gh_live_\w+)<', shown.text).group(1)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "@acme/demo", "messages": [{"role": "user", "content": "Hello from a container"}]},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

        for name, service in ((beat, "beat"), (worker, "worker"), (web, "web")):
            grace = int(services[service]["stop_grace_period"].removesuffix("s"))
            _run("podman", "--runtime", "runc", "stop", "--time", str(grace), name, timeout=grace + 30)
            code = int(_run("podman", "inspect", "--format", "{{.State.ExitCode}}", name))
            assert code != 137, f"{service} was killed after its grace period:\n{logs(name)[-3000:]}"
        for name in names:
            output = logs(name)
            assert key not in output and "Traceback" not in output, output[-3000:]
    finally:
        for name in names:
            subprocess.run(["podman", "rm", "--force", "--time", "0", name], capture_output=True, timeout=60)
