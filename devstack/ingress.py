"""A real nginx in front of the hub, as z2jh's ingress-nginx puts one: the hub's public address.

It passes websocket upgrades on unbuffered, optionally terminates TLS, and optionally routes the
broker's paths (``<prefix>clusters/<id>/broker/...`` and ``.../workers/...``) to the broker's own
listener (``Broker.listen``) instead of the hub's proxy, as ``deploy/manifests/broker-ingress.yaml``
does in production: outbound-only workers and their peers then use the hub's one public address
while their bytes skip configurable-http-proxy.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cmsaf_hub.service.broker import ingress_path

from .hub import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

#: Upgraded connections are relayed through one buffer of ``proxy_buffer_size`` per direction (the
#: default, one page, costs a read and a write per 4 KiB); ingress-nginx sets it per Ingress with
#: the ``proxy-buffer-size`` annotation.
PROXY = """
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto {scheme};
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_buffer_size 256k;
            proxy_buffers 4 256k;
            proxy_busy_buffers_size 256k;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;"""

CONF = """
worker_processes 1;
pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen {host}:{port}{ssl};
{certificate}{broker}
        location / {{{hub}
        }}
    }}
}}
"""


@dataclass
class Ingress:
    process: subprocess.Popen
    host: str
    port: int
    scheme: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def ingress_conf(state: Path, host: str, port: int, hub_url: str, *, tls: tuple[Path, Path] | None = None,
                 broker: tuple[str, str] | None = None) -> str:
    """nginx.conf for :func:`start_ingress`. ``broker``: (service prefix, ``host:port`` of ``Broker.listen``)."""
    scheme = "https" if tls else "http"
    certificate = f"        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n" if tls else ""
    routes = ""
    if broker is not None:
        routes = (f"        location ~ ^{ingress_path(broker[0])} {{"
                  + PROXY.format(upstream=f"http://{broker[1]}", scheme=scheme) + "\n        }\n")
    return CONF.format(state=state, host=host, port=port, ssl=" ssl" if tls else "", certificate=certificate,
                       broker=routes, hub=PROXY.format(upstream=hub_url.rstrip("/"), scheme=scheme))


async def start_ingress(state: Path, hub_url: str, *, host: str = "127.0.0.1", port: int = 0,
                        tls: tuple[Path, Path] | None = None, broker: tuple[str, str] | None = None,
                        timeout: float = 30) -> Ingress:
    """Start nginx in front of ``hub_url`` (TLS with ``tls`` = (certificate, key)); returns once it accepts.

    ``port`` 0: a free one on ``host``.
    """
    state.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    conf = state / "nginx.conf"
    conf.write_text(ingress_conf(state, host, port, hub_url, tls=tls, broker=broker))
    stderr = state / "stderr.log"
    process = subprocess.Popen([NGINX, "-p", str(state), "-c", str(conf), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=open(stderr, "wb"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return Ingress(process, host, port, "https" if tls else "http")
        except OSError:
            if process.poll() is not None:
                break
            await asyncio.sleep(0.1)
    process.kill()
    process.wait(10)
    errors = state / "error.log"
    raise RuntimeError("nginx did not start: " + stderr.read_text() + (errors.read_text() if errors.exists() else ""))
