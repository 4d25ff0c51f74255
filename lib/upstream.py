"""Validation of upstream base URLs, which admins set and the gateway later connects to.

The gateway runs inside the operator's network, so an upstream URL is a server-side request
target. Which addresses it may reach is the operator's policy, `UPSTREAM_ALLOWED_NETWORKS`:
CIDRs plus the words `public` (every globally routable address), `private` (RFC 1918 and IPv6
ULA: where self-hosted models live) and `loopback`. The default is `public,private`, plus
`loopback` under DEBUG (`make run`'s demo model listens on 127.0.0.1), so a workspace admin
cannot point a deployment at the host's own Redis or database. Link-local addresses, the cloud
metadata services, unspecified and multicast addresses are refused whatever the policy says.

Hostnames are resolved and every address checked, so `http://metadata.example/` pointing at
169.254.169.254, or `http://2852039166/` (the same address as a decimal number, which the C
resolver accepts), are refused too. Checking at save time does not stop DNS rebinding, so every
client that connects (the gateway's native and httpx clients, the health probe) resolves, checks
with `forbidden_address_reason()`, and connects to exactly the address it checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
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


PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
NAMED_NETWORKS = {"private": PRIVATE_NETWORKS, "loopback": LOOPBACK_NETWORKS}
_PRIVATE = tuple(ipaddress.ip_network(n) for n in PRIVATE_NETWORKS)


@dataclass(frozen=True)
class NetworkPolicy:
    """Where upstream calls may go: any public address (when `public`) and these networks."""

    public: bool
    networks: tuple[IPNetwork, ...]

    def allows(self, address: IPAddress) -> bool:
        if any(address.version == net.version and address in net for net in self.networks):
            return True
        return self.public and address.is_global


def default_allowed_networks(debug: bool) -> list[str]:
    return ["public", "private", "loopback"] if debug else ["public", "private"]


def parse_network_policy(entries: Iterable[str]) -> NetworkPolicy:
    """`public`, `private`, `loopback` and CIDRs (a bare address is one host); ValueError names a bad entry."""
    public = False
    networks: list[IPNetwork] = []
    for entry in entries:
        word = entry.strip().lower()
        if not word:
            continue
        if word == "public":
            public = True
            continue
        for cidr in NAMED_NETWORKS.get(word, (entry.strip(),)):
            try:
                networks.append(ipaddress.ip_network(cidr))
            except ValueError:
                raise ValueError(f"{entry!r} is not public, private, loopback or a CIDR such as 10.0.0.0/8 (without host bits)") from None
    return NetworkPolicy(public=public, networks=tuple(dict.fromkeys(networks)))


_policy_cache: dict[tuple[str, ...], NetworkPolicy] = {}


def current_policy() -> NetworkPolicy:
    """The policy settings.UPSTREAM_ALLOWED_NETWORKS describes (parsed once per distinct value)."""
    entries = tuple(settings.UPSTREAM_ALLOWED_NETWORKS)
    policy = _policy_cache.get(entries)
    if policy is None:
        policy = _policy_cache[entries] = parse_network_policy(entries)
    return policy


def _kind(address: IPAddress) -> str:
    if address.is_loopback:
        return "a loopback address"
    if address in ipaddress.ip_network("100.64.0.0/10"):
        return "a shared (carrier-grade NAT) address"
    if any(address.version == net.version and address in net for net in _PRIVATE):
        return "a private address"
    if address.is_global:
        return "a public address"
    return "a reserved address"


def forbidden_address_reason(address: IPAddress | str, policy: NetworkPolicy | None = None) -> str | None:
    """Why an upstream call must not connect to this address, or None when it may (the decision
    every connecting client makes on the address it resolved, before it connects)."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return forbidden_address_reason(embedded, policy)
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata service"
    if any(address in network for network in LINK_LOCAL_NETWORKS):
        return f"{address} is a link-local address"
    if address.is_unspecified:
        return f"{address} is the unspecified address"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if not (policy or current_policy()).allows(address):
        return f"{address} is {_kind(address)}, which this installation does not allow upstreams to use (UPSTREAM_ALLOWED_NETWORKS)"
    return None


class UpstreamRefused(ValueError):
    """The upstream host resolves to an address the policy refuses (the message says which, and why)."""


def resolve_checked(host: str, port: int, *, resolve: Resolver | None = None, policy: NetworkPolicy | None = None) -> list[str]:
    """The addresses to connect to for host:port, every one of them allowed.

    One refused address refuses the host: a name that resolves to both an allowed and a refused
    address is a rebinding attempt or a mistake either way. OSError when it does not resolve.
    """
    host = host.strip("[]")
    try:
        addresses = [str(ipaddress.ip_address(host.split("%", 1)[0]))]
    except ValueError:
        addresses = list(dict.fromkeys((resolve or system_resolver)(host, port)))
    if not addresses:
        raise OSError(f"{host} has no address")
    for address in addresses:
        reason = forbidden_address_reason(address, policy)
        if reason is not None:
            raise UpstreamRefused(f"Refused: {reason}.")
    return addresses


def pinned_url(url: str, address: str) -> tuple[str, str]:
    """The URL with its host replaced by the checked address, and the Host header value to send,
    so a client connects to exactly the address that was checked (TLS still verifies the name:
    pass the original host as SNI)."""
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), host_header


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def validate_upstream_url(
    url: str, *, resolve: Resolver = system_resolver, allow_unresolved: bool = False, policy: NetworkPolicy | None = None
) -> str:
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
        reason = forbidden_address_reason(address, policy)
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
