"""compose.yaml cannot run here (no registry, no container runtime that may start containers), so
it is checked against what it starts: the Dockerfile, scripts/entrypoint.sh and the settings.
tests/test_container.py checks the same against the image podman actually built."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("web", "worker", "beat")


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def dockerfile_instruction(name: str) -> str:
    """The last stage's instruction `name` (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final_stage = text.rsplit("\nFROM ", 1)[1]
    matches = re.findall(rf"^{name} (.+)$", final_stage, flags=re.MULTILINE)
    assert matches, f"no {name} in the Dockerfile's final stage"
    return matches[-1].strip()


def dockerfile_env() -> dict[str, str]:
    env = {}
    for line in re.findall(r"^ENV (.+)$", (ROOT / "Dockerfile").read_text().replace("\\\n", " ").rsplit("\nFROM ", 1)[1], re.MULTILINE):
        env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def entrypoint_roles() -> set[str]:
    text = (ROOT / "scripts" / "entrypoint.sh").read_text()
    top = text.split('case "$role" in', 1)[1]
    return set(re.findall(r"^  (\w+)\)", top, flags=re.MULTILINE))


def names_the_code_reads() -> set[str]:
    """Environment variables read by settings (env_* helpers; secrets also as NAME_FILE), by the
    entrypoint (${NAME...}), by Celery/billiard (REMAP_SIGTERM)."""
    code = "\n".join(
        p.read_text() for app in ("console", "gateway", "keys", "deployments", "usage", "lib") for p in (ROOT / app).rglob("*.py")
    )
    names = set(re.findall(r'env_\w+\(\s*"(\w+)"', code))
    names |= {f"{n}_FILE" for n in re.findall(r'env_secret\(\s*"(\w+)"', code)}
    names |= set(re.findall(r"\$\{(\w+)", (ROOT / "scripts" / "entrypoint.sh").read_text()))
    return names


def test_every_gatehouse_service_runs_an_entrypoint_role_of_the_image():
    services = compose()["services"]
    entrypoint = json.loads(dockerfile_instruction("ENTRYPOINT"))
    assert entrypoint == ["/app/scripts/entrypoint.sh"]
    assert json.loads(dockerfile_instruction("CMD")) == ["web"]
    for role in ROLES:
        service = services[role]
        assert service["build"] == "."
        assert service["command"] == [role], role
        assert role in entrypoint_roles()
        # The health check is the image's own, for this role.
        assert service["healthcheck"]["test"] == ["CMD", *entrypoint, "health", role], role
    assert "health" in entrypoint_roles()
    assert json.loads(dockerfile_instruction("HEALTHCHECK").split(" CMD ", 1)[1]) == [*entrypoint, "health", "web"]


def test_environment_names_are_ones_the_code_reads():
    known = names_the_code_reads()
    image_env = dockerfile_env()
    for role in ROLES:
        env = compose()["services"][role]["environment"]
        unknown = set(env) - known
        assert not unknown, f"{role}: compose sets {sorted(unknown)}, which nothing reads"
    # And the image's own defaults too (PATH and Python's variables aside).
    assert set(image_env) - known - {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"} == set()
    # The port web listens on is the one compose publishes and the health check asks.
    web = compose()["services"]["web"]
    assert web["environment"]["GATEHOUSE_PORT"] == image_env["GATEHOUSE_PORT"] == "8000"
    assert web["ports"] == ["127.0.0.1:8000:8000"]
    assert dockerfile_instruction("EXPOSE") == "8000"


def test_secrets_come_from_files_mounted_into_each_service():
    data = compose()
    for role in ROLES:
        service = data["services"][role]
        env = service["environment"]
        assert "SECRET_KEY" not in env and "API_KEY_PEPPER" not in env and "DATABASE_PASSWORD" not in env
        for name, value in env.items():
            if name.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/") and secret in service["secrets"], (role, name)
                assert "file" in data["secrets"][secret]
        assert ":" not in env["DATABASE_URL"].split("@")[0].removeprefix("postgres://"), "no password in DATABASE_URL"
    postgres = data["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"


def test_data_lives_in_volumes_and_the_root_file_system_is_read_only():
    data = compose()
    volume_path = json.loads(dockerfile_instruction("VOLUME"))[0]
    assert volume_path == dockerfile_env()["GATEHOUSE_VAR_DIR"]
    for role in ROLES:
        service = data["services"][role]
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"]
        [mount] = service["volumes"]
        name, path = mount.split(":")
        assert path == volume_path and name in data["volumes"]
    assert data["services"]["postgres"]["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert data["services"]["redis"]["volumes"] == ["redis-data:/data"]


def test_start_order_and_stop_grace_periods_fit_the_processes():
    services = compose()["services"]
    for role in ROLES:
        depends = services[role]["depends_on"]
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy"
    for role in ("worker", "beat"):
        assert services[role]["depends_on"]["web"]["condition"] == "service_healthy"  # web has migrated
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"

    def seconds(value: str) -> int:
        return int(value.removesuffix("s"))

    web, worker = services["web"], services["worker"]
    assert seconds(web["stop_grace_period"]) > int(web["environment"]["GRACEFUL_TIMEOUT"])
    assert seconds(worker["stop_grace_period"]) > int(worker["environment"]["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"])
