"""The live page as a sink and an observer of the run: it listens as it is made, and serves from its own thread."""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import socket
import threading
import urllib.parse

from stream.events import Event
from stream.types import Frame, MnstreamError, Prediction, SourceInfo, UsageError
from stream.web.address import WebAddress
from stream.web.board import Board
from stream.web.server import Server

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class WebSink:
    """Serves the run's live page (see `stream.web`) while the run lasts.

    The port is taken when the sink is made, so that a port in use ends the run before any source opens; the
    server then runs on a thread of its own, with its own event loop, until `close`. Writing a frame only keeps
    it for the server: the run never waits for a viewer.
    """

    needs_overlay = True
    reads_image = True

    def __init__(self, address: WebAddress, *, fps: float, token: str | None = None) -> None:
        """Listens on the address and starts serving the page, with no streams until `show`, which prints its URL.

        Args:
            address: Where to listen.
            fps: The most frames a second each stream sends to a viewer.
            token: What every request must carry; one is made up where the address is not the loopback's, as
                anyone who reaches it could otherwise watch.

        Raises:
            UsageError: The port is in use, or the address is not this machine's.
        """
        self._board = Board()
        token = token or (None if address.is_loopback else secrets.token_urlsafe(24))
        listener = _listen(address)
        port = listener.getsockname()[1]
        self.url = _url(address.host, port, token)
        """Where the page is, with its token."""
        self._server = Server(self._board, fps=fps, token=token, port=port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(listener,), name="mnstream-web", daemon=True)
        self._thread.start()
        self._started.wait(START_TIMEOUT_S)
        if self._loop is None:
            self.close()
            raise MnstreamError(f"--web could not start serving: {self._failure or 'it did not start in time'}")

    def _serve(self, listener: socket.socket) -> None:
        try:
            asyncio.run(self._server.serve(listener, ready=self._ready))
        except BaseException as error:
            self._failure = error
        finally:
            listener.close()
            self._started.set()

    def _ready(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._started.set()

    def show(self, infos: list[SourceInfo]) -> None:
        """The run's streams, once their sources are open and the run is sure to start: a tile each."""
        self._board.show(infos)
        log.info(f"watch it in a browser: {self.url}")

    def write(self, frame: Frame, prediction: Prediction) -> None:
        if self._failure is not None:
            raise MnstreamError(f"the web page's server failed: {type(self._failure).__name__}: {self._failure}")
        self._board.write(frame, prediction)

    def notify(self, event: Event) -> None:
        self._board.notify(event)

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._server.stop)
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            log.info(f"the web page's server is still busy {STOP_TIMEOUT_S:.0f} s after the stop; not waiting for it")


def _listen(address: WebAddress) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        return socket.create_server((address.host, address.port), family=family)
    except OSError as error:
        where = f"{address.host}:{address.port}"
        if error.errno == errno.EADDRINUSE:
            raise UsageError(
                f"--web {where}: the port is in use; choose another port or stop what listens there"
            ) from None
        raise UsageError(
            f"--web {where}: cannot listen there ({error.strerror or error}); give this machine's address"
        ) from None


def _url(host: str, port: int, token: str | None) -> str:
    """The page's address as a browser elsewhere types it, with the token: a ready link, as Jupyter prints."""
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    query = f"?{urllib.parse.urlencode({'token': token})}" if token else ""
    return f"http://{host}:{port}/{query}"
