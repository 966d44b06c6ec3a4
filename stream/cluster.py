"""Joining or starting the Ray cluster that `mnstream serve` deploys on and `--engine serve` runs send frames to."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from dataclasses import dataclass

import ray

from stream.types import UsageError, first_line

REACH_TIMEOUT_S = 3.0
"""How long a cluster's address may take to accept a connection; Ray's own wait for a dead one is a minute."""


@dataclass(frozen=True, slots=True)
class Connection:
    """This process's link to a Ray cluster."""

    address: str
    """The cluster's address (host:port of its GCS), as other processes join it."""
    started: bool
    """Whether this process started the cluster, and its end ends the cluster."""
    joined: bool
    """Whether this process connected (rather than finding Ray already connected), and so disconnects."""

    def close(self) -> None:
        """Disconnects, or stops the cluster where this process started it."""
        if self.joined:
            ray.shutdown()


def connect(address: str | None) -> Connection:
    """Joins the Ray cluster at `address`, or starts one on this machine when it is None.

    A process already connected to Ray (a test, a user's own program) keeps its connection.

    Args:
        address: `auto` (the cluster running on this machine), `HOST:PORT` of a cluster's head, `ray://HOST:PORT`
            (Ray Client), or None to start a cluster of this process's own, on all its cores.

    Raises:
        UsageError: No cluster at the address, or none running on this machine for `auto`.
    """
    if ray.is_initialized():
        return Connection(ray.get_runtime_context().gcs_address, started=False, joined=False)
    target = "local" if address is None else _reachable(address)
    # ray.init puts its own SIGTERM handler (sys.exit) in place of the command's, which finishes the run cleanly.
    on_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    # Off the main thread ray.init warns that it set no SIGTERM handler, which a run does not want.
    ray_logger.setLevel(logging.ERROR)
    try:
        if address is not None:
            _authenticate_like_ray_start()
        ray.init(
            address=target,
            include_dashboard=False if address is None else None,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        # Serve's INFO lines (its router starting, replicas scaling) are not the run's to print.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UsageError(
            f"cannot join the Ray cluster at {address}: {first_line(error)}; start one with `ray start --head` or "
            "`mnstream serve`, or check --address"
        ) from None
    finally:
        ray_logger.setLevel(level)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
    return Connection(ray.get_runtime_context().gcs_address, started=address is None, joined=True)


def _authenticate_like_ray_start() -> None:
    """Sends the token of this machine (`~/.ray/auth_token`, `RAY_AUTH_TOKEN`) when joining a cluster, as `ray start
    --address` does: a cluster that `mnstream serve` or `ray.init` started requires it, and `ray.init` only sends it
    where `RAY_AUTH_MODE=token` is set, so a run in another terminal would retry unauthenticated for a minute.
    """
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _reachable(address: str) -> str:
    """The address, once its head accepts a connection (`auto` resolved to the cluster on this machine).

    Raises:
        UsageError: Nothing answers there, or no cluster runs on this machine.
    """
    from ray._private.services import canonicalize_bootstrap_address_or_die

    if address.startswith("ray://"):
        host_port = address.removeprefix("ray://")
    else:
        try:
            # Ray's own lookup of `auto`: RAY_ADDRESS, the last `ray start`, or the one GCS process running here.
            host_port = canonicalize_bootstrap_address_or_die(address)
        except (ConnectionError, ValueError) as error:
            raise UsageError(
                f"no Ray cluster at --address {address}: {first_line(error)}; start one with `ray start --head` or "
                "`mnstream serve`"
            ) from None
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as error:
        raise UsageError(
            f"cannot reach the Ray cluster at {address} ({error.strerror or error}); is it running? "
            "(`ray status` on its head) or check --address"
        ) from None
    return address if address.startswith("ray://") else host_port
