"""The HTTP endpoint Prometheus scrapes: prometheus_client's server, in a thread of its
own, bound to the one address given and to nothing else.

Off unless an address is given. The address is checked before anything is mounted: a
malformed one, or one that cannot be bound (in use, not this machine's), is bad input.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from amlfs.errors import UserError

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


def parse_address(text: str, what: str = "--metrics-address") -> tuple[str, int]:
    """(host, port) of TEXT, "IP:PORT" ("[IPv6]:PORT" for IPv6); a UserError if it is
    not. An IP address, not a name: what is bound is exactly what was asked for."""
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        # An IPv6 address only in brackets: "::1:80" could be either.
        number = int(port) if ipaddress.ip_address(host).version == 4 or bracketed else 0
    except ValueError:
        number = 0
    if not 0 < number < 65536:
        raise UserError(f"{what}: expected IP:PORT, e.g. 127.0.0.1:9101; got {text!r}")
    return host, number


class Exporter:
    """A running endpoint; close() stops it."""

    def __init__(self, address: str, collector: Collector):
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

        host, port = parse_address(address)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        ProcessCollector(registry=registry)  # memory, open files, CPU of this process
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as error:
            raise UserError(f"cannot serve metrics on {address}: "
                            f"{error.strerror or error}") from None  # fmt: skip
        log.info("metrics at http://%s/metrics", address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def check_address(text: str, what: str = "--metrics-address") -> str:
    """TEXT, once it is known to be an address this process can listen on now: a
    command checks it before it starts a daemon, so that a bad one is refused before
    anything is mounted (the daemon binds it again, and says so if that fails)."""
    host, port = parse_address(text, what)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(f"cannot serve metrics on {text}: "
                            f"{error.strerror or error}") from None  # fmt: skip
    return text
