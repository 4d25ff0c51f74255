"""Upstream URL validation: admins point deployments at self-hosted models, never at metadata services."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from lib.upstream import forbidden_address_reason, upstream_host, validate_upstream_url

# A stand-in for DNS (the process boundary): hostname -> addresses it resolves to.
FAKE_DNS = {
    "vllm": ["172.18.0.5"],
    "gpu.internal.example": ["10.20.30.40", "fd12:3456::40"],
    "api.example.com": ["93.184.215.14"],
    "localhost": ["127.0.0.1", "::1"],
    "rebind.example": ["10.0.0.1", "169.254.169.254"],
    "metadata-alias.example": ["169.254.169.254"],
    "v6-link-local.example": ["fe80::1"],
    "aws-v6.example": ["fd00:ec2::254"],
    "alibaba-meta.example": ["100.100.100.200"],
    "mapped.example": ["::ffff:169.254.169.254"],
}


def fake_resolve(host: str, port: int) -> list[str]:
    if host not in FAKE_DNS:
        raise OSError("Name or service not known")
    return FAKE_DNS[host]


ALLOWED = [
    ("http://10.0.0.5:8000/v1", "http://10.0.0.5:8000/v1"),
    ("http://192.168.1.20/v1/", "http://192.168.1.20/v1"),
    ("http://172.16.0.9:8080", "http://172.16.0.9:8080"),
    ("http://127.0.0.1:9000/v1", "http://127.0.0.1:9000/v1"),
    ("http://[::1]:9000/v1", "http://[::1]:9000/v1"),
    ("http://localhost:11434/v1", "http://localhost:11434/v1"),
    ("http://vllm:8000/v1", "http://vllm:8000/v1"),  # a docker compose service name: no dot, still fine
    ("https://gpu.internal.example/openai/v1", "https://gpu.internal.example/openai/v1"),
    ("HTTPS://api.example.com/v1", "HTTPS://api.example.com/v1"),
    ("http://[fd12:3456::40]:8000/v1", "http://[fd12:3456::40]:8000/v1"),
]

REFUSED = [
    ("ftp://10.0.0.5/v1", "Only http:// and https://"),
    ("file:///etc/passwd", "Only http:// and https://"),
    ("gopher://127.0.0.1:6379/_PING", "Only http:// and https://"),
    ("javascript:alert(1)", "Only http:// and https://"),
    ("10.0.0.5:8000/v1", "Only http:// and https://"),
    ("", "Enter the upstream's base URL"),
    ("http://", "needs a host name"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata service"),
    ("http://169.254.10.1:8000/v1", "link-local"),
    ("http://[fe80::1]/v1", "link-local"),
    ("http://[fe80::1%25eth0]:80/v1", "link-local"),
    ("http://[fd00:ec2::254]/latest/", "cloud metadata service"),
    ("http://[fd20:ce::254]/", "cloud metadata service"),
    ("http://100.100.100.200/latest/meta-data", "cloud metadata service"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata service"),
    ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata service"),  # NAT64 spelling of 169.254.169.254
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata service"),
    ("http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/", "cloud metadata service"),
    ("http://metadata/computeMetadata/v1/", "cloud metadata service"),
    ("http://instance-data/latest/", "cloud metadata service"),
    ("http://metadata-alias.example/v1", "resolves to 169.254.169.254 is a cloud metadata service"),
    ("http://rebind.example/v1", "cloud metadata service"),  # any one bad address refuses the host
    ("http://v6-link-local.example/v1", "link-local"),
    ("http://aws-v6.example/v1", "cloud metadata service"),
    ("http://alibaba-meta.example/v1", "cloud metadata service"),
    ("http://mapped.example/v1", "cloud metadata service"),
    ("http://0.0.0.0:8000/v1", "unspecified"),
    ("http://[::]:8000/v1", "unspecified"),
    ("http://224.0.0.1/v1", "multicast"),
    ("http://user:secret@10.0.0.5/v1", "Do not put credentials in the URL"),
    ("http://10.0.0.5/v1?token=abc", "query string"),
    ("http://10.0.0.5/v1#x", "fragment"),
    ("http://10.0.0.5:99999/v1", "not a valid URL"),
    ("http://10.0.0.5/v 1", "spaces"),
    ("http://does-not-resolve.example/v1", "does not resolve"),
    ("http://10.0.0.5/" + "a" * 300, "longer than 300"),
]


@pytest.mark.parametrize(("url", "normalised"), ALLOWED)
def test_private_loopback_and_public_upstreams_are_allowed(url, normalised):
    assert validate_upstream_url(url, resolve=fake_resolve) == normalised


@pytest.mark.parametrize(("url", "message"), REFUSED)
def test_dangerous_or_malformed_upstreams_are_refused(url, message):
    with pytest.raises(ValidationError) as info:
        validate_upstream_url(url, resolve=fake_resolve)
    assert message in " ".join(info.value.messages)


@pytest.mark.parametrize(
    "url",
    [
        "http://2852039166/",  # 169.254.169.254 as one decimal number
        "http://0xa9fea9fe/",  # ... as hex
        "http://0251.0376.0251.0376/",  # ... as octal quads
        "http://169.254.43518/",  # ... as a.b.c with a 16-bit tail
    ],
)
def test_numeric_spellings_of_the_metadata_address_are_refused_with_the_real_resolver(url):
    # These are not IP literals to Python but the C resolver accepts them (inet_aton); no network needed.
    with pytest.raises(ValidationError) as info:
        validate_upstream_url(url)
    assert "169.254.169.254 is a cloud metadata service" in " ".join(info.value.messages)


def test_real_resolver_allows_localhost():
    assert validate_upstream_url("http://localhost:8000/v1/") == "http://localhost:8000/v1"


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("169.254.169.254", True),
        ("169.254.1.1", True),
        ("fe80::abcd", True),
        ("fd00:ec2::254", True),
        ("2002:a9fe:a9fe::1", True),  # 6to4 wrapping of 169.254.169.254
        ("10.0.0.1", False),
        ("127.0.0.1", False),
        ("::1", False),
        ("8.8.8.8", False),
        ("fd12::1", False),
    ],
)
def test_forbidden_address_reason_for_the_gateway(address, forbidden):
    assert (forbidden_address_reason(address) is not None) is forbidden


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://10.0.0.5:8000/v1/secret-path", "10.0.0.5:8000"),
        ("https://gpu.example.com/v1", "gpu.example.com"),
        ("http://[fd12::1]:9000/v1", "[fd12::1]:9000"),
    ],
)
def test_upstream_host_shows_host_and_port_only(url, host):
    assert upstream_host(url) == host


def test_unresolvable_host_is_refused_unless_allowed():
    def no_dns(host, port):
        raise OSError("no such host")

    with pytest.raises(ValidationError, match="does not resolve"):
        validate_upstream_url("https://api.provider.test/v1", resolve=no_dns)
    assert validate_upstream_url("https://api.provider.test/v1/", resolve=no_dns, allow_unresolved=True) == "https://api.provider.test/v1"
    # Metadata hosts and literals stay refused either way.
    with pytest.raises(ValidationError):
        validate_upstream_url("http://169.254.169.254/latest", resolve=no_dns, allow_unresolved=True)
    with pytest.raises(ValidationError):
        validate_upstream_url("http://metadata.google.internal/", resolve=no_dns, allow_unresolved=True)
