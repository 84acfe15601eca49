"""The nginx the benchmarks use as their upstream: one worker, its own temp dirs, static files."""

from __future__ import annotations

import os


def write_conf(
    workdir: str, port: int, files: str, locations: str, *, worker_connections: int, extra_http: str = ""
) -> str:
    """Write nginx.conf into `workdir` (pid, logs and temp paths there too); returns its path.
    `locations`: the server block's location lines; `extra_http`: more lines of the http block."""
    conf = os.path.join(workdir, "nginx.conf")
    temp = {k: os.path.join(workdir, k) for k in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    with open(conf, "w") as f:
        f.write(
            f"""user root;
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    default_type application/octet-stream;
    sendfile on;
{extra_http}    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {files};
{locations}    }}
}}
"""
        )
    return conf
