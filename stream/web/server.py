"""The live page's HTTP side, on aiohttp: the page, one WebSocket per viewer carrying every stream's frames, the
newest JPEG of a stream, the stats as JSON and the label changes as server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import WSCloseCode, web

from stream.web.board import Board, Shown

HEARTBEAT_S = 30.0
"""A viewer that answers no ping for half as long again is gone (a laptop that slept, a dropped network)."""
CLOSE_TIMEOUT_S = 1.0
"""How long the end of the run waits for a viewer to take its goodbye; a stalled one is cut off."""
_ASSETS = {
    "/": ("page.html", "text/html"),
    "/page.js": ("page.js", "text/javascript"),
    "/page.css": ("page.css", "text/css"),
}
_HEADERS = {
    # Nothing but the page's own files runs or loads, whatever a stream or a label is called.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # The token stays out of the Referer of any link followed from the page.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class _Viewer:
    """One page's WebSocket. What waits for it is the newest frame of each stream and the newest stats, never
    more: a viewer that reads slowly skips frames, and never holds up the run or the other viewers.
    """

    def __init__(self, socket: web.WebSocketResponse, address: str) -> None:
        self.socket = socket
        self.address = address
        """Where it watches from, HOST:PORT, for /stats."""
        self.frames: dict[int, bytes] = {}
        self.stats: str | None = None
        self.last_change = 0
        self.wake = asyncio.Event()
        self.sent = 0
        self.skipped = 0

    def offer(self, stream_id: int, message: bytes) -> None:
        self.skipped += stream_id in self.frames
        self.frames[stream_id] = message
        self.wake.set()


class Server:
    """Serves a board from the event loop of one thread; `serve` runs until `stop`.

    With a token, every request must carry it: as `?token=` (the page then keeps it in a cookie for its own
    requests), the cookie, or an `Authorization: Bearer` header. Without one, it listens on the loopback address
    only, and answers only requests that name it there (a web page whose name resolves to 127.0.0.1 must not read
    it).
    """

    def __init__(self, board: Board, *, fps: float, token: str | None, port: int) -> None:
        self._board = board
        self._interval_s = 1 / fps
        self._token = token
        self._cookie = f"mnstream_token_{port}"
        """Cookies do not tell ports apart: two runs on one machine each keep their own."""
        self._viewers: set[_Viewer] = set()
        self._followers: set[asyncio.Event] = set()
        self._offered: dict[int, int] = {}
        """Stream id -> the `Shown.seq` of the frame last offered to the viewers."""
        self._watched: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        files = resources.files(__package__)
        self._assets = {
            path: (files.joinpath(name).read_text(encoding="utf-8"), content_type)
            for path, (name, content_type) in _ASSETS.items()
        }

    async def serve(self, listener: socket.socket, *, ready: Callable[[asyncio.AbstractEventLoop], None]) -> None:
        """Serves on the bound socket until `stop`; calls `ready` with the loop once it answers requests."""
        self._watched, self._stopping = asyncio.Event(), asyncio.Event()
        runner = web.AppRunner(self._app(), handle_signals=False, access_log=None, shutdown_timeout=CLOSE_TIMEOUT_S)
        await runner.setup()
        try:
            await web.SockSite(runner, listener).start()
            broadcast = asyncio.create_task(self._broadcast())
            ready(asyncio.get_running_loop())
            await self._stopping.wait()
            broadcast.cancel()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        """Ends `serve`; call it on the server's loop."""
        self._stopping.set()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        for path in _ASSETS:
            app.router.add_get(path, self._asset, allow_head=False)
        app.router.add_get("/ws", self._watch, allow_head=False)
        app.router.add_get("/stats", self._stats, allow_head=False)
        app.router.add_get("/events", self._follow, allow_head=False)
        app.router.add_get(r"/streams/{stream_id:\d+}/latest.jpg", self._latest, allow_head=False)
        app.on_response_prepare.append(_secure)
        app.on_shutdown.append(self._say_goodbye)
        return app

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._token is None:
            if request.url.host not in _LOOPBACK_NAMES:
                raise web.HTTPForbidden(text=f"mnstream answers only as {', '.join(sorted(_LOOPBACK_NAMES))}\n")
        else:
            bearer = request.headers.get("Authorization", "").partition("Bearer ")[2]
            given = request.query.get("token") or request.cookies.get(self._cookie) or bearer
            if not secrets.compare_digest(given.encode(), self._token.encode()):
                raise web.HTTPUnauthorized(
                    text="mnstream: this page needs its token: open the URL the run printed, with ?token=\n"
                )
        response = await handler(request)
        if self._token is not None and "token" in request.query and not response.prepared:
            response.set_cookie(self._cookie, self._token, httponly=True, samesite="Strict")
        return response

    async def _asset(self, request: web.Request) -> web.Response:
        text, content_type = self._assets[request.path]
        return web.Response(text=text, content_type=content_type)

    async def _stats(self, request: web.Request) -> web.Response:
        stats = self._board.stats()
        stats["viewers"] = [
            {"address": viewer.address, "sent": viewer.sent, "skipped": viewer.skipped} for viewer in self._viewers
        ]
        return web.json_response(stats)

    async def _latest(self, request: web.Request) -> web.Response:
        stream_id = int(request.match_info["stream_id"])
        encoded = await asyncio.to_thread(self._board.jpeg, stream_id)
        if encoded is None and not self._board.has_stream(stream_id):
            raise web.HTTPNotFound(text=f"this run has no stream {stream_id}; /stats lists its streams\n")
        if encoded is None:
            raise web.HTTPNotFound(text=f"stream {stream_id} has no frame yet\n")
        shown, jpeg = encoded
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"X-Frame-Index": str(shown.frame)})

    async def _watch(self, request: web.Request) -> web.WebSocketResponse:
        # Browsers let any site open a WebSocket anywhere; only the page's own may watch.
        origin = request.headers.get("Origin")
        if origin is not None and origin.partition("://")[2] != request.host:
            raise web.HTTPForbidden(text="mnstream: only its own page may watch\n")
        socket = web.WebSocketResponse(heartbeat=HEARTBEAT_S, compress=False, timeout=CLOSE_TIMEOUT_S)
        await socket.prepare(request)
        host, port = request.transport.get_extra_info("peername")[:2]
        viewer = _Viewer(socket, f"{host}:{port}")
        viewer.stats = json.dumps(self._board.stats())
        viewer.wake.set()
        self._join(self._viewers, viewer)
        # Every stream's newest frame again, so that a page opened after a stream has ended still shows it.
        self._offered.clear()
        # Reading answers pings and notices the page close; nothing a page sends means anything.
        reading = asyncio.create_task(socket.receive())
        try:
            while not socket.closed and not self._stopping.is_set():
                waking = asyncio.create_task(viewer.wake.wait())
                await asyncio.wait([waking, reading], return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
                if reading.done():
                    if reading.result().type not in (web.WSMsgType.TEXT, web.WSMsgType.BINARY):
                        break
                    reading = asyncio.create_task(socket.receive())
                viewer.wake.clear()
                await self._send(viewer)
        except ConnectionError:
            pass
        finally:
            reading.cancel()
            self._leave(self._viewers, viewer)
        return socket

    async def _send(self, viewer: _Viewer) -> None:
        for change in self._board.changes_after(viewer.last_change):
            await viewer.socket.send_str(json.dumps(change.as_json()))
            viewer.last_change = change.seq
        if viewer.stats is not None:
            stats, viewer.stats = viewer.stats, None
            await viewer.socket.send_str(stats)
        while viewer.frames:
            # The newest frame is taken as it is sent: one that comes meanwhile replaces nothing in flight.
            stream_id = next(iter(viewer.frames))
            await viewer.socket.send_bytes(viewer.frames.pop(stream_id))
            viewer.sent += 1

    async def _follow(self, request: web.Request) -> web.StreamResponse:
        """The label changes as server-sent events, from those still remembered, or after `Last-Event-ID`."""
        last_id = request.headers.get("Last-Event-ID", "0")
        after = int(last_id) if last_id.isdigit() else 0
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        wake = asyncio.Event()
        wake.set()
        self._join(self._followers, wake)
        try:
            while not self._stopping.is_set():
                await wake.wait()
                wake.clear()
                for change in self._board.changes_after(after):
                    await response.write(
                        f"id: {change.seq}\nevent: change\ndata: {json.dumps(change.as_json())}\n\n".encode()
                    )
                    after = change.seq
        except ConnectionError:
            pass
        finally:
            self._leave(self._followers, wake)
        return response

    def _join(self, watchers: set, watcher: object) -> None:
        watchers.add(watcher)
        self._watched.set()

    def _leave(self, watchers: set, watcher: object) -> None:
        watchers.discard(watcher)
        if not self._viewers and not self._followers:
            self._watched.clear()

    async def _broadcast(self) -> None:
        """While anyone watches, at most `fps` times a second: each stream's new frame, encoded once for every
        viewer, the stats where they changed, and a wake-up for whoever follows the label changes.
        """
        loop = asyncio.get_running_loop()
        last_stats, last_change = "", 0
        while True:
            await self._watched.wait()
            started_at = loop.time()
            if self._viewers:
                fresh = self._board.fresh(self._offered)
                encoded = await asyncio.to_thread(_jpegs, self._board, fresh)
                for stream_id, frame in zip(fresh, encoded, strict=True):
                    if frame is None:
                        continue
                    shown, jpeg = frame
                    self._offered[stream_id] = shown.seq
                    header = json.dumps({"stream_id": stream_id, **shown.as_json()}).encode()
                    message = struct.pack("!I", len(header)) + header + jpeg
                    for viewer in self._viewers:
                        viewer.offer(stream_id, message)
                stats = json.dumps(self._board.stats())
                if stats != last_stats:
                    last_stats = stats
                    for viewer in self._viewers:
                        viewer.stats = stats
                        viewer.wake.set()
            if self._board.change_count != last_change:
                last_change = self._board.change_count
                for watcher in [*self._followers, *(viewer.wake for viewer in self._viewers)]:
                    watcher.set()
            await asyncio.sleep(max(0.0, started_at + self._interval_s - loop.time()))

    async def _say_goodbye(self, app: web.Application) -> None:
        self._stopping.set()
        for wake in [*self._followers, *(viewer.wake for viewer in self._viewers)]:
            wake.set()
        if self._viewers:
            stats = json.dumps(self._board.stats())
            goodbyes = [asyncio.ensure_future(_goodbye(viewer.socket, stats)) for viewer in self._viewers]
            await asyncio.wait(goodbyes, timeout=CLOSE_TIMEOUT_S)


async def _goodbye(socket: web.WebSocketResponse, stats: str) -> None:
    """The final stats (every stream ended), then the close that tells the page not to reconnect."""
    await socket.send_str(stats)
    await socket.close(code=WSCloseCode.GOING_AWAY, message=b"the run has ended")


def _jpegs(board: Board, stream_ids: list[int]) -> list[tuple[Shown, bytes] | None]:
    return [board.jpeg(stream_id) for stream_id in stream_ids]


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(_HEADERS)
