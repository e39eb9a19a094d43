"""CORS (the Fetch standard's HTTP headers) for what browsers fetch from other origins."""

from __future__ import annotations

from twisted.web import server


def allow_cross_origin(request: server.Request, origins: tuple[str, ...], methods: bytes) -> None:
    """Let pages from C{origins} ("*": any) read this answer; answer preflights too.

    XMPP authenticates inside the stream, not with cookies, so no credentials
    are allowed and a wildcard leaks nothing a page could not ask for itself.
    """
    raw = request.getHeader(b"origin")
    if raw is None or not origins:
        return
    origin = raw.decode("latin-1")
    if "*" in origins:
        request.setHeader(b"access-control-allow-origin", b"*")
    elif origin_allowed(origin, origins):
        request.setHeader(b"access-control-allow-origin", origin.encode())
        request.setHeader(b"vary", b"Origin")
    else:
        return
    request.setHeader(b"access-control-allow-methods", methods)
    request.setHeader(b"access-control-allow-headers", b"Content-Type")
    request.setHeader(b"access-control-max-age", b"86400")


def origin_allowed(origin: str, origins: tuple[str, ...]) -> bool:
    """Whether a page's Origin header (scheme://host[:port], as browsers send it) is allowed."""
    return "*" in origins or origin in origins
