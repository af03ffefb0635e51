"""URL normalisation and crawl-scope rules: one spelling per page, so a page is fetched once."""

from __future__ import annotations

import ipaddress
from fnmatch import fnmatchcase
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import idna

from helpline.common.messages import CrawlScope

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters RFC 3986 allows unescaped in a path or query, plus "%" so escapes are kept as is.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?[]"
_STRIPPED = str.maketrans("", "", "\t\n\r")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


def normalize_url(url: str, base: str | None = None) -> str | None:
    """The canonical absolute http(s) form of `url` (resolved against `base`), or None."""
    # Browsers drop tabs and newlines anywhere in a URL; hrefs wrapped by editors contain them.
    url = url.translate(_STRIPPED).strip()
    if not url:
        return None
    if base is not None:
        try:
            url = urljoin(base, url)
        except ValueError:
            return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = _canonical_host(parts.hostname)
    if host is None:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if userinfo:
        netloc = f"{userinfo}@{netloc}"
    path = quote(remove_dot_segments(parts.path) or "/", safe=_PATH_SAFE)
    query = quote(parts.query, safe=_QUERY_SAFE)
    return urlunsplit((scheme, netloc, path, query, ""))


def remove_dot_segments(path: str) -> str:
    """Resolve "." and ".." segments as RFC 3986 section 5.2.4 does."""
    if not path:
        return path
    output: list[str] = []
    segments = path.split("/")
    for segment in segments[1:] if path.startswith("/") else segments:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    # A trailing "." or ".." names a directory, so the result keeps its trailing slash.
    if segments[-1] in {".", ".."}:
        output.append("")
    prefix = "/" if path.startswith("/") else ""
    return prefix + "/".join(output)


def same_site(url: str, root: str) -> bool:
    """Whether `url` has the host (scheme and a `www.` prefix aside) and port of `root`."""
    a, b = normalize_url(url), normalize_url(root)
    if a is None or b is None:
        return False
    pa, pb = urlsplit(a), urlsplit(b)
    return _site_host(pa.hostname) == _site_host(pb.hostname) and pa.port == pb.port


def canonical_url(url: str, canonical: str | None) -> str:
    """The page's declared canonical URL if it is http(s) on the same site, else `url`."""
    if canonical is None:
        return url
    normalized = normalize_url(canonical)
    if normalized is None or not same_site(normalized, url):
        return url
    return normalized


def in_scope(url: str, scope: CrawlScope) -> bool:
    """Whether a crawl limited by `scope` may visit `url`."""
    normalized, root = normalize_url(url), normalize_url(scope.root_url)
    if normalized is None or root is None or not same_site(normalized, root):
        return False
    path = urlsplit(normalized).path
    root_path = urlsplit(root).path
    if not path.startswith(root_path[: root_path.rfind("/") + 1]):
        return False

    def matches(pattern: str) -> bool:
        return fnmatchcase(path, pattern) or fnmatchcase(normalized, pattern)

    if any(matches(p) for p in scope.exclude):
        return False
    return not scope.include or any(matches(p) for p in scope.include)


def _canonical_host(hostname: str) -> str | None:
    host = hostname.lower().rstrip(".")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            return None
    return host if host and set(host) <= _HOST_CHARS else None


def _site_host(hostname: str | None) -> str:
    host = hostname or ""
    return host.removeprefix("www.")
