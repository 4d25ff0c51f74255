"""Validation of upstream base URLs, which admins set and the gateway later connects to.

The gateway runs inside the operator's network, so an upstream URL is a server-side request
target. Private and loopback addresses are allowed on purpose (self-hosted models live there);
link-local addresses and the cloud metadata services are refused, because a request there
hands out the host's cloud credentials. Hostnames are resolved and every address checked, so
`http://metadata.example/` pointing at 169.254.169.254, or `http://2852039166/` (the same
address as a decimal number, which the C resolver accepts), are refused too.

Checking at save time does not stop DNS rebinding; the gateway should call
`forbidden_address_reason()` on the address it actually connects to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]

# Metadata services reachable without credentials from inside a cloud VM.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd20:ce::254",  # GCP metadata over IPv6
    )
)
METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
LINK_LOCAL_NETWORKS = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
MAX_URL_LENGTH = 300


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, Teredo), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_address_reason(address: IPAddress | str) -> str | None:
    """Why the gateway must not connect to this address, or None when it may."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return forbidden_address_reason(embedded)
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata service"
    if any(address in network for network in LINK_LOCAL_NETWORKS):
        return f"{address} is a link-local address"
    if address.is_unspecified:
        return f"{address} is the unspecified address"
    if address.is_multicast:
        return f"{address} is a multicast address"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def validate_upstream_url(url: str, *, resolve: Resolver = system_resolver, allow_unresolved: bool = False) -> str:
    """Return the normalised URL (no trailing slash) or raise ValidationError saying why not.

    allow_unresolved accepts a host name this server cannot resolve right now (a public provider
    seen from a host without outside DNS); the gateway's connect-time check still applies.
    """
    url = (url or "").strip()
    if not url:
        raise ValidationError("Enter the upstream's base URL, e.g. http://10.0.0.5:8000/v1.")
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValidationError("The URL must not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValidationError("This is not a valid URL.") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError("Only http:// and https:// upstream URLs are allowed.")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("Do not put credentials in the URL; use the upstream API key field.")
    if parts.query or parts.fragment:
        raise ValidationError("The base URL cannot have a query string or fragment.")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ValidationError("The URL needs a host name.")
    if host in METADATA_HOSTNAMES:
        raise ValidationError(f"{host} is a cloud metadata service and cannot be an upstream.")

    try:
        literal: IPAddress | None = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = list(resolve(host, port or (443 if parts.scheme.lower() == "https" else 80)))
        except (OSError, UnicodeError):
            addresses = []
        if not addresses and not allow_unresolved:
            raise ValidationError(f"The host {host} does not resolve from this server.")
    for address in addresses:
        reason = forbidden_address_reason(address)
        if reason is not None:
            via = "" if literal is not None else f"{host} resolves to "
            raise ValidationError(f"Refused: {via}{reason}.")
    return url.rstrip("/")


def upstream_host(url: str) -> str:
    """Host[:port] only, for display: never the path, which may carry tokens in some setups."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host
