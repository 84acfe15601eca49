"""A strict, incremental RFC 9112 message parser in pure Python, independent of llhttp.

The hostile suite needs a second opinion on every byte nsproxy emits: the recording upstream
parses what the proxy forwards with it, and the clients parse what the proxy answers. Anything
this parser cannot read unambiguously is a *violation* (a server with another parser could
frame it differently), recorded with a reason; parsing of that stream stops there.

Rules enforced (RFC 9112 / RFC 9110):
- CRLF only: a bare LF or bare CR anywhere in a head, chunk line or trailer is a violation.
- request-line = token SP request-target SP HTTP-version (visible ASCII target, no extra SP);
  status-line = HTTP-version SP 3DIGIT SP reason (HTAB / SP / VCHAR / obs-text).
- field-name = token, no whitespace before ':'; no obs-fold; field values without CTLs except HTAB.
- Framing: Content-Length is 1*DIGIT on exactly one line; Transfer-Encoding and Content-Length
  never together; a request's Transfer-Encoding ends in exactly one `chunked`; underscore
  spellings of the framing headers (which CGI-style servers read as the same variable) are
  ambiguous and a violation; an HTTP/1.1 request carries exactly one Host.
- chunk = 1*HEXDIG [chunk-ext] CRLF data CRLF, chunk-ext per RFC 9112 7.1.1 (token or
  quoted-string values), then a trailer section of field lines.
- Responses: HEAD (told by the caller), 1xx, 204 and 304 have no body; 101 switches the rest of
  the stream to a tunnel; no CL and no TE (or TE not ending in chunked) is close-delimited.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*)"
)
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_STATUS = re.compile(rb"[0-9]{3}")
MAX_HEAD = 1 << 20
MAX_CHUNK_HEX = 15  # 15 hex digits: beyond that a size no server can honestly buffer or count


def normalise(name: str) -> str:
    """How a CGI-style server sees a header name: case-insensitive, '_' read as '-'."""
    return name.lower().replace("_", "-")


@dataclass
class Message:
    """One parsed request or response. `headers` keep their order, case and duplicates."""

    kind: str  # "request" | "response"
    method: str = ""
    target: str = ""
    version: str = ""
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    framing: str = "none"  # "none" | "length" | "chunked" | "close" | "tunnel"
    complete: bool = False
    interim: bool = False  # a 1xx other than 101

    def values(self, name: str, *, fuzzy: bool = False) -> list[str]:
        """Every value of `name`, in order; `fuzzy` also matches '_' spellings."""
        want = normalise(name) if fuzzy else name.lower()
        return [v for n, v in self.headers if (normalise(n) if fuzzy else n.lower()) == want]

    def all_fields(self) -> list[tuple[str, str]]:
        return self.headers + self.trailers

    def __str__(self) -> str:
        line = f"{self.method} {self.target} {self.version}" if self.kind == "request" else f"{self.status}"
        return f"<{line} headers={self.headers} body={self.body[:60]!r} complete={self.complete}>"


class Violation(Exception):
    pass


def _bare_line_break(data: bytes, final: bool) -> int:
    """Index of the first bare LF or bare CR in `data` (a trailing CR counts only if `final`), or -1."""
    i = data.find(b"\n")
    while i != -1:
        if i == 0 or data[i - 1] != 0x0D:
            return i
        i = data.find(b"\n", i + 1)
    i = data.find(b"\r")
    while i != -1:
        if i + 1 == len(data):
            return i if final else -1
        if data[i + 1] != 0x0A:
            return i
        i = data.find(b"\r", i + 1)
    return -1


def _check_value(value: bytes, where: str) -> str:
    for c in value:
        if (c < 0x20 and c != 0x09) or c == 0x7F:
            raise Violation(f"control character 0x{c:02x} in {where}")
    return value.decode("latin-1")


def parse_field_lines(lines: list[bytes], where: str) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise Violation(f"obs-fold (line starting with whitespace) in {where}: {line[:60]!r}")
        name, colon, value = line.partition(b":")
        if not colon:
            raise Violation(f"field line without ':' in {where}: {line[:60]!r}")
        if not name or any(c not in TCHAR for c in name):
            raise Violation(f"field name is not a token in {where}: {name[:60]!r}")
        text = _check_value(value.strip(b" \t"), f"{where} field {name.decode('latin-1')}")
        out.append((name.decode("latin-1"), text))
    return out


def transfer_codings(values: list[str]) -> list[str]:
    """The coding names of Transfer-Encoding lines (lower case); Violation if the list is malformed."""
    names = []
    for element in ",".join(values).split(","):
        element = element.strip(" \t")
        if not element:
            raise Violation(f"empty element in Transfer-Encoding {values!r}")
        name, _, params = element.partition(";")
        name = name.strip(" \t")
        if not name or any(ord(c) not in TCHAR for c in name):
            raise Violation(f"Transfer-Encoding coding is not a token: {element!r}")
        if name.lower() == "chunked" and params:
            raise Violation(f"chunked with parameters in Transfer-Encoding {values!r}")
        names.append(name.lower())
    return names


class StrictParser:
    """Feed it one direction of one connection; it appends to `messages` as heads are parsed.

    kind "request" (what an upstream receives) or "response" (what a client receives; `method_of`
    tells the method of the n-th request, for HEAD; "HEAD?": a HEAD with a malformed request line).
    `on_head` / `on_complete` are called with the message as soon as its head / its whole body is
    parsed. After a violation or a 101, the rest of
    the stream is kept in `rest` and never parsed.
    """

    def __init__(
        self,
        kind: str,
        *,
        method_of: Callable[[int], str] | None = None,
        require_version: str | None = None,
        on_head: Callable[[Message], None] | None = None,
        on_complete: Callable[[Message], None] | None = None,
    ) -> None:
        self.kind = kind
        self.method_of = method_of or (lambda _i: "GET")
        self.require_version = require_version
        self.on_head = on_head
        self.on_complete = on_complete
        self.messages: list[Message] = []
        self.violation: str | None = None
        self.rest = b""  # bytes after a violation, or tunnel bytes after a 101
        self.tunnel = False
        self.eof = False
        self._buf = b""
        self._state = "head"
        self._cur: Message | None = None
        self._left = 0
        self._finals = 0  # final responses seen (indexes method_of)

    # -- public ------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed by a complete element (pipelining detection)."""
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """Between messages with nothing buffered."""
        return self._state == "head" and not self._buf and self.violation is None

    def feed(self, data: bytes) -> None:
        if self.violation is not None or self.tunnel:
            self.rest += data
            return
        self._buf += data
        try:
            while self._step():
                pass
        except Violation as exc:
            self.violation = str(exc)
            self.rest, self._buf = self._buf, b""

    def switch_to_tunnel(self) -> None:
        """The peer switched protocols after the current message: what follows is not HTTP."""
        self.tunnel = True
        self.rest, self._buf = self._buf, b""

    def finish(self) -> None:
        """End of stream: a close-delimited body ends here; a partial message stays incomplete."""
        self.eof = True
        if self.violation is not None or self.tunnel:
            return
        cur = self._cur
        if self._state == "close" and cur is not None:
            cur.body += self._buf
            self._buf = b""
            self._complete(cur)
        elif self._state == "head" and self._buf:
            # Bytes that never became a whole head: garbage (e.g. a body a 204 must not have).
            self.violation = f"stream ended inside a {self.kind} head: {self._buf[:80]!r}"
            self.rest, self._buf = self._buf, b""

    # -- the state machine ------------------------------------------------------------------
    def _step(self) -> bool:
        state = self._state
        if state == "head":
            return self._head()
        cur = self._cur
        assert cur is not None
        if state == "length":
            take = self._buf[: self._left]
            cur.body += take
            self._buf = self._buf[len(take) :]
            self._left -= len(take)
            if self._left == 0:
                self._complete(cur)
                return True
            return False
        if state == "close":
            cur.body += self._buf
            self._buf = b""
            return False
        if state == "chunk-size":
            line = self._line("chunk-size line")
            if line is None:
                return False
            m = _CHUNK_LINE.fullmatch(line)
            if m is None:
                raise Violation(f"malformed chunk-size line {line[:80]!r}")
            if len(m.group(1).lstrip(b"0")) > MAX_CHUNK_HEX:
                raise Violation(f"chunk size too large {m.group(1)[:40]!r}")
            self._left = int(m.group(1), 16)
            self._state = "chunk-data" if self._left else "trailers"
            return True
        if state == "chunk-data":
            if len(self._buf) < self._left + 2:
                if len(self._buf) > self._left and self._buf[self._left : self._left + 1] != b"\r":
                    raise Violation("chunk data not followed by CRLF")
                return False
            if self._buf[self._left : self._left + 2] != b"\r\n":
                raise Violation(f"chunk data not followed by CRLF: {self._buf[self._left : self._left + 10]!r}")
            cur.body += self._buf[: self._left]
            self._buf = self._buf[self._left + 2 :]
            self._state = "chunk-size"
            return True
        if state == "trailers":
            end = self._buf.find(b"\r\n\r\n") if not self._buf.startswith(b"\r\n") else -2
            region = self._buf if end == -1 else self._buf[: max(end, 0)]
            if _bare_line_break(region, False) != -1:
                raise Violation(f"bare CR or LF in trailers: {region[:80]!r}")
            if end == -1:
                if len(self._buf) > MAX_HEAD:
                    raise Violation("trailer section too large")
                return False
            if end == -2:
                self._buf = self._buf[2:]
            else:
                lines = self._buf[:end].split(b"\r\n")
                cur.trailers = parse_field_lines(lines, "trailers")
                self._buf = self._buf[end + 4 :]
            self._complete(cur)
            return True
        raise AssertionError(state)

    def _line(self, what: str) -> bytes | None:
        end = self._buf.find(b"\r\n")
        region = self._buf if end == -1 else self._buf[:end]
        if _bare_line_break(region, False) != -1:
            raise Violation(f"bare CR or LF in {what}: {region[:80]!r}")
        if end == -1:
            if len(self._buf) > 4096:
                raise Violation(f"{what} too long")
            return None
        self._buf = self._buf[end + 2 :]
        return region

    def _head(self) -> bool:
        buf = self._buf
        if not buf:
            return False
        end = buf.find(b"\r\n\r\n")
        region = buf if end == -1 else buf[:end]
        if _bare_line_break(region, False) != -1:
            raise Violation(f"bare CR or LF in a {self.kind} head: {region[:120]!r}")
        if end == -1:
            if len(buf) > MAX_HEAD:
                raise Violation(f"{self.kind} head too large")
            return False
        lines = region.split(b"\r\n")
        self._buf = buf[end + 4 :]
        msg = Message(kind=self.kind)
        if self.kind == "request":
            self._request_line(msg, lines[0])
        else:
            self._status_line(msg, lines[0])
        msg.headers = parse_field_lines(lines[1:], f"{self.kind} head")
        self.messages.append(msg)
        self._cur = msg
        self._framing(msg)
        if self.on_head is not None:
            self.on_head(msg)
        if self._state == "head" and not self.tunnel:  # no body
            self._complete(msg)
        return not self.tunnel

    def _request_line(self, msg: Message, line: bytes) -> None:
        parts = line.split(b" ")
        if len(parts) != 3:
            raise Violation(f"request-line is not 'method SP target SP version': {line[:120]!r}")
        method, target, version = parts
        if not method or any(c not in TCHAR for c in method):
            raise Violation(f"method is not a token: {method[:40]!r}")
        if not target or any(c < 0x21 or c > 0x7E for c in target):
            raise Violation(f"request-target has invalid bytes: {target[:80]!r}")
        if not _VERSION.fullmatch(version) or version not in (b"HTTP/1.0", b"HTTP/1.1"):
            raise Violation(f"not an HTTP/1.x version: {version[:20]!r}")
        if self.require_version is not None and version.decode() != self.require_version:
            raise Violation(f"version {version.decode()} where {self.require_version} is required")
        msg.method, msg.target, msg.version = method.decode(), target.decode(), version.decode()

    def _status_line(self, msg: Message, line: bytes) -> None:
        version, sp1, rest = line.partition(b" ")
        status, sp2, reason = rest.partition(b" ")
        if not sp1 or not sp2 or not _VERSION.fullmatch(version) or not _STATUS.fullmatch(status):
            raise Violation(f"malformed status-line {line[:120]!r}")
        if version not in (b"HTTP/1.0", b"HTTP/1.1"):
            raise Violation(f"not an HTTP/1.x version in status-line: {version!r}")
        msg.version, msg.status = version.decode(), int(status)
        msg.reason = _check_value(reason, "reason-phrase")

    def _framing(self, msg: Message) -> None:
        names = [normalise(n) for n, _ in msg.headers]
        raw = [n.lower() for n, _ in msg.headers]
        for n, r in zip(names, raw, strict=True):
            if n in ("content-length", "transfer-encoding") and r != n:
                raise Violation(f"ambiguous framing header spelled with '_': {r}")
        te_values = msg.values("transfer-encoding")
        cl_values = msg.values("content-length")
        if te_values and cl_values:
            raise Violation("Content-Length together with Transfer-Encoding")
        if len(cl_values) > 1:
            raise Violation(f"more than one Content-Length line: {cl_values!r}")
        length = None
        if cl_values:
            if not cl_values[0].isascii() or not cl_values[0].isdigit() or len(cl_values[0]) > 18:
                raise Violation(f"Content-Length is not 1*DIGIT: {cl_values[0]!r}")
            length = int(cl_values[0])
        codings = transfer_codings(te_values) if te_values else []
        if codings.count("chunked") > 1 or ("chunked" in codings and codings[-1] != "chunked"):
            raise Violation(f"chunked not exactly once and last in Transfer-Encoding {te_values!r}")
        if self.kind == "request":
            hosts = msg.values("host")
            if msg.version == "HTTP/1.1" and len(hosts) != 1:
                raise Violation(f"HTTP/1.1 request with {len(hosts)} Host lines")
            if codings and codings[-1] != "chunked":
                raise Violation(f"request Transfer-Encoding does not end in chunked: {te_values!r}")
            if codings:
                self._body(msg, "chunked")
            elif length:
                self._body(msg, "length", length)
            return
        # response
        status = msg.status
        if 100 <= status < 200:
            if status == 101:
                msg.framing = "tunnel"
                self._finals += 1
                msg.complete = True
                if self.on_complete is not None:
                    self.on_complete(msg)
                self.switch_to_tunnel()
                return
            msg.interim = True
            return
        method = self.method_of(self._finals)
        self._finals += 1
        if method == "HEAD?":
            # A HEAD whose request line a server may fail to parse (so it may not know the method):
            # an error response that closes the connection may then carry its body.
            closes = any(t.strip().lower() == "close" for v in msg.values("connection") for t in v.split(","))
            method = "GET" if status >= 400 and closes else "HEAD"
        if method == "HEAD" or status in (204, 304):
            return
        if codings:
            self._body(msg, "chunked" if codings[-1] == "chunked" else "close")
        elif length is not None:
            if length:
                self._body(msg, "length", length)
        else:
            self._body(msg, "close")

    def _body(self, msg: Message, framing: str, length: int = 0) -> None:
        msg.framing = framing
        self._state = {"chunked": "chunk-size", "length": "length", "close": "close"}[framing]
        self._left = length

    def _complete(self, msg: Message) -> None:
        msg.complete = True
        self._state = "head"
        self._cur = None
        if self.on_complete is not None:
            self.on_complete(msg)


def parse_all(kind: str, data: bytes, **kw) -> StrictParser:  # type: ignore[no-untyped-def]
    """Parse a whole stream at once (and its end)."""
    parser = StrictParser(kind, **kw)
    parser.feed(data)
    parser.finish()
    return parser
