from __future__ import annotations

import ipaddress

import pytest

from lib.net import ip_allowed, parse_networks, resolve_client_ip

PROXIES = (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        ("203.0.113.5", None, (), "203.0.113.5"),
        ("203.0.113.5", "1.2.3.4", (), "203.0.113.5"),  # untrusted peer: header ignored
        ("10.0.0.2", "198.51.100.7", PROXIES, "198.51.100.7"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.7", PROXIES, "198.51.100.7"),  # forged left part ignored
        ("10.0.0.2", "198.51.100.7, 10.0.0.9", PROXIES, "198.51.100.7"),  # trusted hops skipped
        ("10.0.0.2", "garbage, 10.0.0.9", PROXIES, "10.0.0.2"),
        ("::ffff:203.0.113.5", None, (), "203.0.113.5"),  # IPv4-mapped peer
        ("not-an-ip", None, (), None),
    ],
)
def test_resolve_client_ip(peer, xff, trusted, expected):
    assert resolve_client_ip(peer, xff, trusted) == expected


def test_ip_allowed():
    nets = parse_networks(["10.1.0.0/16", "2001:db8::/32"])
    assert ip_allowed("10.1.2.3", nets)
    assert ip_allowed("::ffff:10.1.2.3", nets)
    assert ip_allowed("2001:db8::1", nets)
    assert not ip_allowed("10.2.0.1", nets)
    assert not ip_allowed(None, nets)
    assert ip_allowed("8.8.8.8", ())  # no allowlist: everyone
