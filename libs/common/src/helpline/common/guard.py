"""The SSRF guard: connect only to public addresses, or to hosts allowed by name (the scraper's
fetches and the webhooks' deliveries)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from helpline.common.errors import BlockedAddress, InputRejected, Permanent, Retryable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Deprecated IPv4-compatible addresses (::a.b.c.d); some stacks still route them as IPv4.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks the guard lets through even though they are not public."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> AllowList:
        """Parse a comma-separated list of hostnames, IP addresses and CIDR networks."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in spec.split(","):
            entry = raw.strip().removeprefix("[").removesuffix("]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(_host_key(entry))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, ip: IPAddress) -> bool:
        """Whether `host`, or the address `ip` it resolved to, is on the list."""
        if _host_key(host) in self.hosts:
            return True
        candidates = (ip, _embedded_ipv4(ip) or ip)
        return any(a in n for a in candidates for n in self.networks if a.version == n.version)


def is_public(ip: IPAddress) -> bool:
    """Whether `ip`, or the IPv4 address embedded in it, is a globally routable unicast address."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        # The wrapper prefixes are themselves "global" or "reserved"; what counts is the target.
        return is_public(embedded)
    # is_global alone lets multicast through (Python 3.11), hence the extra checks.
    return ip.is_global and not (
        ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_loopback
    )


async def resolve_checked(url: str, allow: AllowList) -> list[str]:
    """Resolve the host of `url`; raise BlockedAddress unless every address may be connected to."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputRejected(f"not a valid URL: {url}", field="url") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise BlockedAddress("blocked address: only http and https URLs are fetched")
    if not parts.hostname:
        raise InputRejected(f"URL has no host: {url}", field="url")
    return await check_host(parts.hostname, port or _DEFAULT_PORTS[scheme], allow)


async def check_host(host: str, port: int, allow: AllowList) -> list[str]:
    """Resolve `host` and return its addresses; raise BlockedAddress if any is not allowed."""
    addresses = await _resolve(host, port)
    for ip in addresses:
        if not is_public(ip) and not allow.allows(host, ip):
            raise BlockedAddress("blocked address: the host is not a public address")
    return list(dict.fromkeys(str(ip) for ip in addresses))


async def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = _literal_ip(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise Retryable(f"temporary failure resolving host {host}") from exc
        raise Permanent(f"could not resolve host {host}") from exc
    except UnicodeError as exc:
        raise Permanent(f"could not resolve host {host}") from exc
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            # The scope id ("%eth0") of a link-local IPv6 address is not part of the address.
            addresses.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    if not addresses:
        raise Permanent(f"could not resolve host {host}")
    return addresses


def _literal_ip(host: str) -> IPAddress | None:
    candidate = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        pass
    # Mirror what the socket layer would connect to: inet_aton reads "127.1", "0x7f000001",
    # "2130706433" and octal parts as IPv4 addresses, so a check must read them the same way.
    # inet_aton also accepts trailing junk after whitespace, which no hostname has.
    if not candidate or not all(c.isalnum() or c == "." for c in candidate):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(candidate))
    except OSError:
        return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, 6to4, NAT64 or IPv4-compatible address leads to."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _host_key(host: str) -> str:
    return host.strip().lower().rstrip(".")
