"""Where the live page listens: `[HOST:]PORT`, on the loopback address unless a host is given."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from stream.types import ConfigError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class WebAddress:
    """A host and a port to listen on; port 0 lets the system choose a free one."""

    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        """Whether only this machine can connect: the one address that needs no token."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_web_address(text: str) -> WebAddress:
    """`8080`, `0.0.0.0:8080`, `myhost:8080` or `[::]:8080` as a host and a port.

    Raises:
        ConfigError: Not a port from 0 to 65535, or an empty host.
    """
    host, colon, port = text.strip().rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    rule = "is [HOST:]PORT with a port from 0 to 65535, e.g. 8080 or 0.0.0.0:8080"
    if not port.isdigit() or int(port) > 65535 or (colon and not host):
        raise ConfigError(f"output.web: {rule}, got {text!r}", key="output.web", rule=rule)
    return WebAddress(host or LOOPBACK, int(port))
