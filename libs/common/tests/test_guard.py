from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from helpline.common.errors import BlockedAddress, Permanent, Retryable
from helpline.common.guard import AllowList, is_public, resolve_checked

NOTHING = AllowList.parse("")


@pytest.fixture
async def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str] | int]:
    """Answers the running loop's getaddrinfo from a table: a list of addresses or an EAI_* code.

    Any name missing from the table fails the test, so literal addresses must never reach it.
    """
    table: dict[str, list[str] | int] = {}
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        answer = table.get(host)
        if answer is None:
            pytest.fail(f"unexpected DNS lookup of {host!r}")
        if isinstance(answer, int):
            raise socket.gaierror(answer, "fake failure")
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port, 0, 0) if ":" in a else (a, port),
            )
            for a in answer
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return table


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.8.9.10:8080/admin",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://239.255.255.250/",
        "http://0.0.0.0/",
        "http://255.255.255.255/",
        "http://[::1]/",
        "http://[::]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[ff02::1]/",
        "http://[ff0e::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::127.0.0.1]/",
        "http://[2002:7f00:1::]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b::a00:1]/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "https://0xa9.0xfe.0xa9.0xfe/",
    ],
)
async def test_non_public_literals_are_blocked(url: str, fake_dns: dict[str, Any]) -> None:
    with pytest.raises(BlockedAddress, match="blocked address"):
        await resolve_checked(url, NOTHING)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://93.184.215.14/", ["93.184.215.14"]),
        ("https://93.184.215.14:8443/x", ["93.184.215.14"]),
        (
            "http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
            ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
        ),
        ("http://[2002:5db8:d70e::]/", ["2002:5db8:d70e::"]),
        ("http://[64:ff9b::5db8:d70e]/", ["64:ff9b::5db8:d70e"]),
        ("http://1572394766/", ["93.184.215.14"]),
    ],
)
async def test_public_literals_pass_without_dns(
    url: str, expected: list[str], fake_dns: dict[str, Any]
) -> None:
    assert await resolve_checked(url, NOTHING) == expected


async def test_a_name_passes_when_every_address_is_public(fake_dns: dict[str, Any]) -> None:
    fake_dns["docs.example"] = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    assert await resolve_checked("https://docs.example/a", NOTHING) == [
        "93.184.215.14",
        "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
    ]


async def test_a_name_is_blocked_when_any_address_is_private(fake_dns: dict[str, Any]) -> None:
    fake_dns["sneaky.example"] = ["93.184.215.14", "10.1.2.3"]
    with pytest.raises(BlockedAddress) as caught:
        await resolve_checked("https://sneaky.example/", NOTHING)
    assert "blocked address" in caught.value.message
    assert "10.1.2.3" not in caught.value.message
    assert caught.value.field == "url"


async def test_localhost_is_blocked_without_echoing_its_address() -> None:
    with pytest.raises(BlockedAddress) as caught:
        await resolve_checked("http://localhost:8000/", NOTHING)
    assert "127.0.0.1" not in str(caught.value)
    assert "::1" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["ftp://93.184.215.14/file", "file:///etc/passwd", "gopher://example.com/", "//x/"]
)
async def test_only_http_and_https_are_fetched(url: str, fake_dns: dict[str, Any]) -> None:
    with pytest.raises(BlockedAddress, match="only http and https URLs are fetched"):
        await resolve_checked(url, NOTHING)


async def test_unresolvable_host_is_permanent(fake_dns: dict[str, Any]) -> None:
    fake_dns["nowhere.example"] = socket.EAI_NONAME
    with pytest.raises(Permanent, match=r"could not resolve host nowhere\.example"):
        await resolve_checked("https://nowhere.example/", NOTHING)


async def test_temporary_resolver_failure_is_retryable(fake_dns: dict[str, Any]) -> None:
    fake_dns["flaky.example"] = socket.EAI_AGAIN
    with pytest.raises(Retryable):
        await resolve_checked("https://flaky.example/", NOTHING)


async def test_allow_list_address_lets_loopback_through(fake_dns: dict[str, Any]) -> None:
    allow = AllowList.parse("127.0.0.1")
    assert await resolve_checked("http://127.0.0.1:8080/", allow) == ["127.0.0.1"]
    with pytest.raises(BlockedAddress):
        await resolve_checked("http://127.0.0.2:8080/", allow)


async def test_allow_list_cidr_lets_a_network_through(fake_dns: dict[str, Any]) -> None:
    allow = AllowList.parse("10.0.0.0/8")
    assert await resolve_checked("http://10.20.30.40/", allow) == ["10.20.30.40"]
    with pytest.raises(BlockedAddress):
        await resolve_checked("http://192.168.0.1/", allow)


async def test_allow_list_hostname_lets_its_addresses_through(fake_dns: dict[str, Any]) -> None:
    fake_dns["docs.internal"] = ["10.0.0.7"]
    fake_dns["other.internal"] = ["10.0.0.7"]
    allow = AllowList.parse("Docs.Internal.")
    assert await resolve_checked("http://docs.internal/", allow) == ["10.0.0.7"]
    with pytest.raises(BlockedAddress):
        await resolve_checked("http://other.internal/", allow)


def test_allow_list_parse_tolerates_whitespace_and_empty_entries() -> None:
    allow = AllowList.parse(" 127.0.0.1 , 10.0.0.0/8,, Intranet.Example. ,[::1], 192.168.1.5/24 ")
    assert allow.hosts == frozenset({"intranet.example"})
    assert {str(n) for n in allow.networks} == {
        "127.0.0.1/32",
        "10.0.0.0/8",
        "::1/128",
        "192.168.1.0/24",
    }


def test_empty_allow_list_allows_nothing() -> None:
    allow = AllowList.parse("  ,  ")
    assert allow == AllowList()
    assert not allow.allows("localhost", ipaddress.ip_address("127.0.0.1"))


def test_allow_list_matches_an_ipv4_mapped_address() -> None:
    allow = AllowList.parse("127.0.0.1")
    assert allow.allows("x", ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not allow.allows("x", ipaddress.ip_address("::ffff:127.0.0.2"))


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("192.0.2.1", False),
        ("198.18.0.1", False),
        ("240.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("::ffff:192.168.0.1", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public
