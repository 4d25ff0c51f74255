"""Start Gatehouse the way README "Production" documents it, as real processes, for the tests.

The environment is built from scratch (never the test run's own: tests/settings.py relaxes HTTPS),
secrets come from files, and the processes are started through scripts/entrypoint.sh.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def production_env(tmp: Path, *, database_url: str, redis_url: str, port: int, **extra: str) -> dict[str, str]:
    """What an operator sets, per README "Production" (a TLS proxy in front: BEHIND_TLS_PROXY=1).
    The secrets are the test run's own (keys the tests create must match the server's pepper),
    handed over in files as compose.yaml does."""
    from django.conf import settings

    secrets_dir = tmp / "secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    (secrets_dir / "secret_key").write_text(settings.SECRET_KEY + "\n")
    (secrets_dir / "api_key_pepper").write_text(settings.API_KEY_PEPPER + "\n")
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "DEBUG": "0",
        "SECRET_KEY_FILE": str(secrets_dir / "secret_key"),
        "API_KEY_PEPPER_FILE": str(secrets_dir / "api_key_pepper"),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "BEHIND_TLS_PROXY": "1",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "GATEHOUSE_VAR_DIR": str(tmp / "var"),
        "STATIC_ROOT": str(tmp / "static"),
        "HOST": "127.0.0.1",
        "GATEHOUSE_PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        # The tests' upstream (the demo model) listens on loopback, which production refuses by default.
        "UPSTREAM_ALLOWED_NETWORKS": "private,127.0.0.1/32",
    }
    env.update(extra)
    return env


class Process:
    """A role started through scripts/entrypoint.sh, its output in a log file."""

    def __init__(self, role: str, env: dict[str, str], log: Path, *, cwd: Path = ROOT, argv: list[str] | None = None):
        self.role, self.log = role, log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv or [str(cwd / "scripts" / "entrypoint.sh"), role],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.role} exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.role} did not answer {url} within {timeout} s:\n{self.output()[-4000:]}")

    def wait_output(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.role} never printed {text!r}:\n{self.output()[-4000:]}")
            time.sleep(0.2)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the process alone (as `docker stop` does), then wait for it to exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise AssertionError(f"{self.role} ignored SIGTERM for {timeout} s:\n{self.output()[-4000:]}") from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class Browser:
    """A client that behaves as a browser behind the TLS proxy: X-Forwarded-Proto: https, and it
    keeps Secure cookies although the test talks plain HTTP to the loopback port."""

    def __init__(self, base_url: str):
        self.http = httpx.Client(base_url=base_url, timeout=30, headers={"x-forwarded-proto": "https"})
        self.cookies: dict[str, str] = {}

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        response = self.http.request(method, url, headers=headers, **kwargs)
        for header in response.headers.get_list("set-cookie"):
            for name, morsel in SimpleCookie(header).items():
                if morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return response

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, data: dict, **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        headers.setdefault("referer", str(self.http.base_url).replace("http://", "https://").rstrip("/") + "/" + url.lstrip("/"))
        return self.request("POST", url, data=data, headers=headers, **kwargs)

    def sign_in(self, username: str, password: str) -> None:
        login = self.get("/accounts/login/")
        assert login.status_code == 200, login.text[:2000]
        token = csrf_token(login.text)
        response = self.post("/accounts/login/", {"login": username, "password": password, "csrfmiddlewaretoken": token})
        assert response.status_code == 302, response.text[:2000]
        assert "sessionid" in self.cookies

    def close(self) -> None:
        self.http.close()


def csrf_token(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or 'localhost'}:{s['PORT'] or 5432}/{s['NAME']}"


def set_production_password(user, password: str) -> None:
    """The test settings hash with MD5 for speed; a production server knows only PBKDF2 & co."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher
    from django.utils.crypto import get_random_string

    user.password = PBKDF2PasswordHasher().encode(password, get_random_string(22), iterations=1000)
    user.save(update_fields=["password"])
