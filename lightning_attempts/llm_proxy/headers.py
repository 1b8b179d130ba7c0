"""Which headers cross the proxy: none of the hop-by-hop ones (RFC 9110 7.6.1), nor ``Host``, nor the proxy's key."""

from __future__ import annotations

from collections.abc import Iterable

RawHeaders = Iterable[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}  # aiohttp sets Host and Content-Length itself
KEY_HEADERS = frozenset({b"authorization", b"x-api-key"})


def _named_by_connection(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Headers that ``Connection`` names as hop-by-hop for this hop."""
    return frozenset(
        token.strip().lower() for name, value in headers if name == b"connection" for token in value.split(b",")
    )


def request_headers(headers: RawHeaders, *, strip_keys: bool, identity: bool) -> list[tuple[str, str]]:
    """The client's headers to send to the backend (ASGI gives lower-case names).

    ``strip_keys``: leave out ``Authorization`` and ``x-api-key`` (the proxy's own key);
    ``identity``: ask for an uncompressed answer, to read token ids from it.
    """
    given = list(headers)
    dropped = _NOT_FORWARDED | _named_by_connection(given) if any(n == b"connection" for n, _ in given) else None
    skip = dropped if dropped is not None else _NOT_FORWARDED
    if strip_keys:
        skip = skip | KEY_HEADERS
    forwarded = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in given
        if name not in skip and not (identity and name == b"accept-encoding")
    ]
    if identity:
        forwarded.append(("accept-encoding", "identity"))
    return forwarded


def response_headers(headers: RawHeaders) -> list[tuple[bytes, bytes]]:
    """The backend's answer headers to send to the client (names lower-cased, as ASGI servers expect)."""
    given = [(name.lower(), value) for name, value in headers]
    skip = HOP_BY_HOP | _named_by_connection(given) if any(n == b"connection" for n, _ in given) else HOP_BY_HOP
    return [(name, value) for name, value in given if name not in skip]
