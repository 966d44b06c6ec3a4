"""Watch a run from a browser: a live page served by the run itself (`--web [HOST:]PORT`).

The page shows a tile per stream with its annotated video, shown label, top-k bars, FPS, latency, drops and state,
and a log of the label changes. Besides it: `/streams/<id>/latest.jpg` (a stream's newest annotated frame),
`/stats` (JSON) and `/events` (the label changes as server-sent events). aiohttp serves it; it comes with the `web`
extra and is only imported by a run that asks for the page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream.types import UsageError
from stream.web.address import parse_web_address

if TYPE_CHECKING:
    from stream.config import OutputConfig
    from stream.web.sink import WebSink


def open_web(output: OutputConfig) -> WebSink:
    """The page the output config asks for (`output.web`), listening and served.

    Raises:
        UsageError: aiohttp is not installed, or the address cannot be listened on.
    """
    try:
        from stream.web.sink import WebSink
    except ModuleNotFoundError as error:
        if error.name != "aiohttp":
            raise
        raise UsageError("--web needs aiohttp: pip install 'mnstream[web]'") from None
    return WebSink(parse_web_address(output.web), fps=output.web_fps, token=output.web_token)
