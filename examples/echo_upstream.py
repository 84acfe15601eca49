#!/usr/bin/env python3
"""A tiny upstream for the quickstart: answers every request with what it received, as JSON.

    python3 examples/echo_upstream.py --listen 127.0.0.1:9000
    python3 examples/echo_upstream.py --unix /run/echo.sock

The answer shows the request line and headers as nsproxyd forwarded them, so you can see which
tenant asked (the tenant header), X-Forwarded-For and friends. Request bodies are read and counted,
not echoed. Standard library only; one thread per connection, keep-alive supported.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nsproxy-echo/1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body_bytes = len(self.rfile.read(length)) if length else 0
        payload = {
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_bytes": body_bytes,
        }
        data = json.dumps(payload, indent=2).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:  # quiet unless --verbose
        if self.server.verbose:  # type: ignore[attr-defined]
            sys.stderr.write(f"echo: {self.address_string()} {format % args}\n")

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    verbose = False


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    verbose = False


def parse_listen(text: str) -> tuple[str, int, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return host, int(port), family


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen", default="127.0.0.1:9000", help="HOST:PORT (port 0 picks a free one)")
    where.add_argument("--unix", help="unix socket path")
    p.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = p.parse_args(argv)

    if args.unix:
        if os.path.exists(args.unix):
            os.unlink(args.unix)
        server: socketserver.BaseServer = UnixServer(args.unix, EchoHandler)
        where_text = f"unix:{args.unix}"
    else:
        host, port, family = parse_listen(args.listen)
        TCPServer.address_family = family
        server = TCPServer((host, port), EchoHandler)
        bound = server.server_address
        where_text = f"http://[{bound[0]}]:{bound[1]}" if family == socket.AF_INET6 else f"http://{bound[0]}:{bound[1]}"
    server.verbose = args.verbose  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"echo upstream listening on {where_text}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if args.unix and os.path.exists(args.unix):
            os.unlink(args.unix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
