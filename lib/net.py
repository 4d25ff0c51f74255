"""Client addresses and IP allowlists, shared by the console (audit) and the gateway (admission)."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

from django.conf import settings
from django.core.exceptions import ValidationError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)  # the gateway parses the same few client addresses on every request
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
    return resolve_client_ip(
        request.META.get("REMOTE_ADDR"),
        request.META.get("HTTP_X_FORWARDED_FOR"),
        settings.TRUSTED_PROXY_NETWORKS,
    )


MAX_ALLOWLIST_ENTRIES = 100
_MAX_ALLOWLIST_TEXT = 8000  # 100 full-length IPv6 CIDRs fit with room to spare
_ENTRY_SEPARATORS = re.compile(r"[,\r\n]+")


def parse_allowlist(text: str | Iterable[str]) -> list[str]:
    """Parse an IP allowlist strictly into canonical CIDR strings, in the order given, without duplicates.

    Entries are separated by commas or newlines. Each is an IPv4/IPv6 address (stored as /32 or
    /128) or a CIDR with a decimal prefix length. Refused, with a message naming the entry: host
    bits set (10.0.0.1/8), a prefix out of range (/33), netmask notation, zone ids, leading zeros,
    and anything that is not an address. IPv4-mapped IPv6 (::ffff:10.0.0.0/104) becomes the
    IPv4 network, because the gateway matches a mapped client address as IPv4.
    """
    raw = _ENTRY_SEPARATORS.split(text) if isinstance(text, str) else list(text)
    if sum(len(entry) + 1 for entry in raw) > _MAX_ALLOWLIST_TEXT:
        raise ValidationError(f"The allowlist is too long (at most {MAX_ALLOWLIST_ENTRIES} entries).", code="too_long")
    entries = [entry.strip() for entry in raw if entry.strip()]
    errors: list[str] = []
    networks: list[str] = []
    for entry in entries:
        try:
            network = _parse_allowlist_entry(entry)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        if network not in networks:
            networks.append(network)
    if errors:
        raise ValidationError(errors[:10], code="invalid")
    if len(networks) > MAX_ALLOWLIST_ENTRIES:
        raise ValidationError(f"At most {MAX_ALLOWLIST_ENTRIES} entries are allowed; this list has {len(networks)}.", code="too_many")
    return networks


def _quote(entry: str) -> str:
    return f"“{entry[:60]}{'…' if len(entry) > 60 else ''}”"


def _parse_allowlist_entry(entry: str) -> str:
    shown = _quote(entry)
    if any(ch.isspace() for ch in entry):
        raise ValueError(f"{shown} is not one address: separate entries with commas or new lines.")
    if "%" in entry:
        raise ValueError(f"{shown}: zone ids (%…) are not allowed.")
    address_text, slash, prefix_text = entry.partition("/")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise ValueError(f"{shown} is not an IP address or CIDR (e.g. 192.168.1.1 or 10.0.0.0/8).") from None
    max_prefix = address.max_prefixlen
    if not slash:
        prefix = max_prefix
    elif not (prefix_text.isascii() and prefix_text.isdigit()) or (len(prefix_text) > 1 and prefix_text[0] == "0"):
        raise ValueError(
            f"{shown}: the part after / must be a prefix length from 0 to {max_prefix} (netmasks such as /255.0.0.0 are not accepted)."
        )
    else:
        prefix = int(prefix_text)
        if prefix > max_prefix:
            raise ValueError(f"{shown}: the prefix length /{prefix} is out of range for IPv{address.version} (0–{max_prefix}).")
    network = ipaddress.ip_network((address, prefix), strict=False)
    if network.network_address != address:
        raise ValueError(f"{shown} has host bits set; the network is {network}.")
    # Below /96 the ::ffff marker itself would be host bits, so a mapped network here is /96 or longer.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        network = ipaddress.ip_network((address.ipv4_mapped, prefix - 96))
    return str(network)
