"""Client addresses and IP allowlists, shared by the console (audit) and the gateway (admission)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(value: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    # An IPv4-mapped IPv6 address (::ffff:10.0.0.1) is the IPv4 peer a dual-stack socket reports.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse already-validated CIDR strings (as stored); invalid entries raise ValueError."""
    return tuple(ipaddress.ip_network(v) for v in values)


def resolve_client_ip(peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[IPNetwork]) -> str | None:
    """The client's address: the socket peer, unless that peer is a trusted proxy.

    Behind trusted proxies X-Forwarded-For is read right to left, skipping trusted hops; the
    first untrusted address is the client. Anything to its left was written by the client and
    is ignored, so a forged header cannot choose the address we check.
    """
    peer_ip = parse_ip(peer) if peer else None
    if peer_ip is None:
        return None
    if not trusted_proxies or not _in_any(peer_ip, trusted_proxies) or not forwarded_for:
        return str(peer_ip)
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = parse_ip(hop)
        if hop_ip is None:
            # A garbled hop means the chain cannot be trusted past this point.
            return str(peer_ip)
        if not _in_any(hop_ip, trusted_proxies):
            return str(hop_ip)
    return str(peer_ip)


def ip_allowed(address: str | None, networks: Sequence[IPNetwork]) -> bool:
    if not networks:
        return True
    ip = parse_ip(address) if address else None
    return ip is not None and _in_any(ip, networks)


def _in_any(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def client_ip(request) -> str | None:
    """The client address of a Django request, honouring settings.TRUSTED_PROXIES."""
    from django.conf import settings

    return resolve_client_ip(
        request.META.get("REMOTE_ADDR"),
        request.META.get("HTTP_X_FORWARDED_FOR"),
        settings.TRUSTED_PROXY_NETWORKS,
    )
