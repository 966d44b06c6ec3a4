"""`mnstream bench`: the pipeline measured against its engine's ceiling, a naive first script and MediaPipe."""

from stream.bench.cli import main

__all__ = ["main"]
