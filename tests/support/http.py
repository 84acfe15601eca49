"""The one HTTP response splitter for tests that read raw bytes off a socket, and the one way tests
read a header's values out of what an upstream echoed."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names; the last copy wins
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def header_values(headers: Iterable[Sequence[str]], name: str) -> list[str]:
    """Every value of header `name` among (name, value) pairs, in order, the names compared the way a
    CGI/WSGI server reads them (case-insensitive, `_` as `-`). Spoof checks assert this whole list
    (one entry, the tenant's own): a dict would hide a forwarded duplicate."""
    wanted = name.lower().replace("_", "-")
    return [value for key, value in headers if key.lower().replace("_", "-") == wanted]


def head_end(data: bytes) -> int:
    """Where the head ends (index after CRLFCRLF), or -1 while it is incomplete."""
    end = data.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def split_response(data: bytes) -> tuple[Response, bytes]:
    """(the first response in `data`, the bytes after it). The response must be complete: framed by
    Content-Length or chunked; without either, the body is everything after the head."""
    end = head_end(data)
    if end < 0:
        raise ValueError(f"incomplete response head: {data[:200]!r}")
    lines = data[: end - 4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    rest = data[end:]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, rest = _dechunk(rest)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(rest) < length:
            raise ValueError(f"incomplete body: {len(rest)} of {length} bytes")
        body, rest = rest[:length], rest[length:]
    else:
        body, rest = rest, b""
    return Response(status, headers, body), rest


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    out = b""
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            raise ValueError("incomplete chunked body")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            _, _, after = rest.partition(b"\r\n")  # trailers are not used by these tests
            return out, after
        out += rest[:size]
        data = rest[size + 2 :]
