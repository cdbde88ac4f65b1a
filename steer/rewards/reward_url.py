"""The URL of a served reward (``http://HOST:PORT[/path]``): recognised in a spec, normalized, checked."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from steer.errors import SteerError, first_line

SCHEMES = ("http://", "https://")
URL_SHAPE = "http://HOST:PORT[/path] (a `steer serve-reward` server)"


def is_url(term: str) -> bool:
    """Whether a spec term names a served reward (``http://...`` or ``https://...``)."""
    return term.strip().lower().startswith(SCHEMES)


def normalize_url(url: str) -> str:
    """``http://HOST:PORT[/base]`` without a trailing slash, scheme and host lower-cased; else a SteerError."""
    if not isinstance(url, str):
        raise SteerError(f"a reward URL must be a string like {URL_SHAPE}, got {type(url).__name__}")
    text = url.strip()
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        raise SteerError(f"reward URL {url!r} holds spaces or characters that are not printable ASCII; write "
                         f"{URL_SHAPE}")
    try:
        parts = urlsplit(text)
        hostname = parts.hostname
    except ValueError as e:  # "http://[::1": Invalid IPv6 URL
        raise SteerError(f"reward URL {url!r} is malformed ({first_line(e)}); write {URL_SHAPE}") from None
    if parts.scheme.lower() not in ("http", "https") or not hostname:
        raise SteerError(f"reward URL {url!r} must look like {URL_SHAPE}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or parts.netloc.endswith(":"):
        raise SteerError(f"reward URL {url!r} has a bad port; write http://HOST:PORT with a port in 1..65535")
    if "@" in parts.netloc:
        raise SteerError(f"reward URL {url!r} must not carry a user or password; write {URL_SHAPE}")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise SteerError(f"reward URL {url!r} must not have a query or fragment; write http://HOST:PORT[/path]")
    host = _host_name(url, hostname.lower(), bracketed="[" in parts.netloc)
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def _host_name(url: str, host: str, bracketed: bool) -> str:
    """``host`` as a URL writes it (an IPv6 address in brackets), or a SteerError."""
    import ipaddress

    if bracketed:
        try:
            if "%" in host:  # a zone id (fe80::1%eth0): not in a reward URL
                raise ValueError(host)
            return f"[{ipaddress.IPv6Address(host)}]"
        except ValueError:
            raise SteerError(f"reward URL {url!r} has a bad IPv6 address {host!r}; write {URL_SHAPE}, e.g. "
                             f"http://[::1]:8085") from None
    if not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?", host):
        raise SteerError(f"reward URL {url!r} has a bad host name {host!r}; write {URL_SHAPE}")
    return host
