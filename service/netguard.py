"""Which source URLs the service may open, and how URLs are shown without their credentials.

`check_source_url(url)` runs before every open (the API calls it too, so a refused URL is a 422 and no
connection is ever attempted). It accepts only rtsp, rtsps, http and https; refuses non-canonical
numeric hosts (2130706433, 0x7f.1, 127.1, 017700000001) outright; resolves the host with a timeout and
refuses the URL unless every resolved address is public, or lies in one of `allowed_networks`
(VAD_ALLOWED_SOURCE_NETWORKS, comma-separated CIDRs). IPv4 addresses embedded in IPv6 ones
(::ffff:a.b.c.d, 6to4, Teredo, NAT64 64:ff9b::/96) are checked as the IPv4 address they carry.

`redact_url(url)` drops the user-info and the values of secret-looking query parameters; use it for
everything that reaches a response, a log line or a metric label.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

ALLOWED_SCHEMES = ("rtsp", "rtsps", "http", "https")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
# Protocols FFmpeg may open for an allowed source, including the ones it nests (RTP over UDP, TLS
# under rtsps/https, AES for HLS). No file, pipe, concat, subfile, data, ftp, gopher, unix, ...
FFMPEG_PROTOCOL_WHITELIST = "rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https,httpproxy,crypto"
SECRET_QUERY_KEYS = re.compile(r"pass|pwd|secret|token|auth|key|sig|credential|session", re.IGNORECASE)
REDACTED = "***"

AnyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
AnyAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
# Hosts made only of digits, hex digits, x and dots: anything inet_aton would read as an address.
_NUMERIC_LOOKING = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]*))*\.?$", re.IGNORECASE)


class SourceRefused(ValueError):
    """The URL may not be opened; the message is safe to show (no credentials). The API maps it to 422."""


@dataclass(frozen=True)
class CheckedSource:
    """A URL that passed the checks, with the addresses it resolved to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[AnyAddress, ...]

    def __repr__(self) -> str:
        return f"CheckedSource({redact_url(self.url)!r}, addresses={[str(a) for a in self.addresses]})"

    __str__ = __repr__

    def pinned_url(self) -> str:
        """The URL with its host replaced by the first checked address (userinfo, port, path kept).

        Opening this one closes the window between our check and FFmpeg's own name lookup
        (DNS rebinding). Used for rtsp:// only: TLS and HTTP virtual hosts need the name.
        """
        parts = urlsplit(self.url)
        address = self.addresses[0]
        host = f"[{address}]" if address.version == 6 else str(address)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"{host}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_networks(value: str | Iterable[str] | None) -> tuple[AnyNetwork, ...]:
    """'127.0.0.0/8, 10.1.0.0/16' (or a list of CIDRs) -> networks; a bad entry raises ValueError."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"allowed source networks: {item!r} is not a CIDR network ({exc})") from None
    return tuple(networks)


def redact_url(url: str) -> str:
    """rtsp://user:pw@cam:554/s?token=x -> rtsp://***@cam:554/s?token=***. Never raises."""
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, REDACTED if SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def secrets_of(url: str) -> list[str]:
    """The strings of a URL that must never be shown: user-info (raw and decoded) and secret params."""
    found: list[str] = []
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return [str(url)]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found.append(userinfo)
        user, _, password = userinfo.partition(":")
        found += [p for p in (password, _unquote(password)) if p]
        if parts.password:
            found.append(parts.password)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if SECRET_QUERY_KEYS.search(key) and value:
            found += [value, quote(value, safe="")]
    return sorted({s for s in found if len(s) >= 1}, key=len, reverse=True)


def redact_text(text: str, *urls: str) -> str:
    """`text` (an exception message, say) with every URL given redacted and its secrets masked."""
    text = str(text)
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact_url(url))
        for secret in secrets_of(url):
            text = text.replace(secret, REDACTED)
    return text


def _unquote(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value)


def embedded_ipv4(address: AnyAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, 6to4, Teredo, NAT64), if any."""
    if address.version != 6:
        return None
    assert isinstance(address, ipaddress.IPv6Address)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(address))
    return None


def _is_public(address: AnyAddress) -> bool:
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_unspecified
        and not address.is_reserved
        and not address.is_loopback
        and not address.is_link_local
        and not address.is_private
    )


def address_allowed(address: AnyAddress, allowed_networks: Sequence[AnyNetwork] = ()) -> bool:
    """Public (with any embedded IPv4 public too), or inside one of the allowed networks."""
    candidates: list[AnyAddress] = [address]
    inner = embedded_ipv4(address)
    if inner is not None:
        candidates.append(inner)
    for candidate in candidates:
        if any(candidate.version == net.version and candidate in net for net in allowed_networks):
            return True
    return all(_is_public(c) for c in candidates)


def _resolve(host: str, port: int, timeout: float) -> list[AnyAddress]:
    """getaddrinfo in a helper thread so a slow resolver cannot hold the caller past `timeout`."""
    result: list[object] = []

    def work() -> None:
        try:
            result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=work, name="vad-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise SourceRefused(f"cannot resolve {host!r} within {timeout:g} s")
    if isinstance(result[0], OSError):
        raise SourceRefused(f"cannot resolve {host!r}: {result[0].strerror or result[0]}")
    addresses: list[AnyAddress] = []
    for _family, _type, _proto, _canon, sockaddr in result[0]:  # type: ignore[union-attr]
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise SourceRefused(f"{host!r} resolves to no address")
    return addresses


def check_source_url(
    url: str,
    allowed_networks: Sequence[AnyNetwork] = (),
    *,
    resolve_timeout: float = 3.0,
    resolver=None,
) -> CheckedSource:
    """Refuse (SourceRefused) any URL the service must not open; otherwise say what it resolved to.

    `resolver(host, port, timeout) -> [ip_address, ...]` replaces the system resolver in tests.
    """
    if not isinstance(url, str) or not url.strip():
        raise SourceRefused("source must be a non-empty URL")
    if len(url) > 2048:
        raise SourceRefused("source URL longer than 2048 characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise SourceRefused("source URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SourceRefused(f"not a valid URL ({redact_text(str(exc), url)})") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = scheme or "none"
        raise SourceRefused(f"scheme {shown!r} is not allowed (allowed: {', '.join(ALLOWED_SCHEMES)})")
    if "|" in url or "," in parts.netloc:
        raise SourceRefused("source URL contains characters FFmpeg treats as separators")
    host = parts.hostname or ""
    if not host:
        raise SourceRefused("source URL has no host")
    port = port or DEFAULT_PORTS[scheme]
    literal: AnyAddress | None
    try:
        literal = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        literal = None
    if literal is None and (_NUMERIC_LOOKING.match(host) or host.isdigit()):
        raise SourceRefused(
            f"host {host!r} is a non-canonical numeric address; write it as a dotted quad or a name"
        )
    if literal is not None:
        if "%" in host:
            raise SourceRefused("scoped IPv6 addresses are not allowed")
        addresses = [literal]
    else:
        resolve = resolver or _resolve
        addresses = list(resolve(host, port, resolve_timeout))
    for address in addresses:
        if not address_allowed(address, allowed_networks):
            kind = _kind(address)
            raise SourceRefused(
                f"host {host!r} resolves to {kind} address {address}; "
                "add its network to allowed_source_networks (VAD_ALLOWED_SOURCE_NETWORKS) to allow it"
            )
    return CheckedSource(url=url, scheme=scheme, host=host, port=port, addresses=tuple(addresses))


def _kind(address: AnyAddress) -> str:
    inner = embedded_ipv4(address)
    probe = inner if inner is not None and not address.is_loopback else address
    for attribute, word in (
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_multicast", "a multicast"),
        ("is_unspecified", "an unspecified"),
        ("is_private", "a private"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(probe, attribute, False):
            return word
    return "a non-public"
