from __future__ import annotations

import ipaddress

import pytest
from django.core.exceptions import ValidationError

from lib.net import ip_allowed, parse_allowlist, parse_networks, resolve_client_ip

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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("192.168.1.1", ["192.168.1.1/32"]),
        ("192.168.1.1, 10.0.0.0/8", ["192.168.1.1/32", "10.0.0.0/8"]),  # the seed document's example
        ("10.0.0.0/8\n172.16.0.0/12\r\n192.168.0.0/16", ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]),
        (" 10.0.0.0/8 ,, \n ,203.0.113.7 ,", ["10.0.0.0/8", "203.0.113.7/32"]),  # blanks and stray separators
        ("10.0.0.0/8, 10.0.0.0/8", ["10.0.0.0/8"]),  # duplicates collapse, order kept
        ("0.0.0.0/0", ["0.0.0.0/0"]),
        ("2001:DB8::/32", ["2001:db8::/32"]),  # IPv6 lower-cased and compressed
        ("2001:0db8:0000:0000:0000:0000:0000:0001", ["2001:db8::1/128"]),
        ("::1", ["::1/128"]),
        ("::ffff:10.1.2.3", ["10.1.2.3/32"]),  # IPv4-mapped IPv6 becomes IPv4
        ("::ffff:10.1.0.0/112", ["10.1.0.0/16"]),
        ("::ffff:0:0/96", ["0.0.0.0/0"]),
        ("::ffff:10.1.2.3, 10.1.2.3", ["10.1.2.3/32"]),  # the same address in two spellings
    ],
)
def test_parse_allowlist_accepts_and_canonicalises(text, expected):
    assert parse_allowlist(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1/8", "“10.0.0.1/8” has host bits set; the network is 10.0.0.0/8."),
        ("2001:db8::1/32", "“2001:db8::1/32” has host bits set; the network is 2001:db8::/32."),
        ("::ffff:10.1.2.3/104", "“::ffff:10.1.2.3/104” has host bits set"),
        ("10.0.0.0/33", "“10.0.0.0/33”: the prefix length /33 is out of range for IPv4 (0–32)."),
        ("2001:db8::/129", "/129 is out of range for IPv6 (0–128)"),
        ("10.0.0.0/255.0.0.0", "netmasks such as /255.0.0.0 are not accepted"),
        ("10.0.0.0/08", "“10.0.0.0/08”: the part after / must be a prefix length"),
        ("10.0.0.0/", "“10.0.0.0/”: the part after / must be a prefix length"),
        ("10.0.0.0/-1", "“10.0.0.0/-1”: the part after / must be a prefix length"),
        ("10.0.0.0/8/9", "“10.0.0.0/8/9”: the part after / must be a prefix length"),
        ("10.0.0.0/²", "“10.0.0.0/²”: the part after / must be a prefix length"),
        ("010.0.0.1", "“010.0.0.1” is not an IP address or CIDR"),  # leading zeros are ambiguous (octal?)
        ("1.2.3", "“1.2.3” is not an IP address or CIDR"),
        ("256.1.1.1", "“256.1.1.1” is not an IP address or CIDR"),
        ("example.com", "“example.com” is not an IP address or CIDR"),
        ("*", "“*” is not an IP address or CIDR"),
        ("10.0.0.*", "“10.0.0.*” is not an IP address or CIDR"),
        ("/8", "“/8” is not an IP address or CIDR"),
        ("fe80::1%eth0", "“fe80::1%eth0”: zone ids (%…) are not allowed."),
        ("192.168.1.1 10.0.0.1", "“192.168.1.1 10.0.0.1” is not one address: separate entries with commas or new lines."),
        ("192.168.1.1;10.0.0.1", "“192.168.1.1;10.0.0.1” is not an IP address or CIDR"),
    ],
)
def test_parse_allowlist_refuses_with_the_bad_entry_named(text, message):
    with pytest.raises(ValidationError) as exc:
        parse_allowlist(f"192.168.1.1, {text}")
    assert len(exc.value.messages) == 1  # the good entry is not blamed
    assert message in exc.value.messages[0]


def test_parse_allowlist_reports_every_bad_entry():
    with pytest.raises(ValidationError) as exc:
        parse_allowlist("10.0.0.1/8, 1.1.1.1, nope")
    assert [m[:12] for m in exc.value.messages] == ["“10.0.0.1/8”", "“nope” is no"]


def test_parse_allowlist_allows_at_most_100_entries():
    hundred = [f"10.0.{i}.0/24" for i in range(100)]
    assert len(parse_allowlist(", ".join(hundred))) == 100
    assert len(parse_allowlist(", ".join(hundred + hundred))) == 100  # duplicates do not count
    with pytest.raises(ValidationError, match="At most 100 entries are allowed; this list has 101."):
        parse_allowlist("\n".join([*hundred, "192.168.0.1"]))
    with pytest.raises(ValidationError, match="too long"):
        parse_allowlist("1.1.1.1, " * 2000)


def test_parse_allowlist_takes_a_list_and_its_output_round_trips():
    parsed = parse_allowlist(["10.0.0.0/8", " 2001:db8::/32 "])
    assert parsed == ["10.0.0.0/8", "2001:db8::/32"]
    assert parse_allowlist(", ".join(parsed)) == parsed
    assert ip_allowed("10.9.9.9", parse_networks(parsed))
    assert ip_allowed("::ffff:10.9.9.9", parse_networks(parse_allowlist("::ffff:10.0.0.0/104")))
