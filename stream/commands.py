"""What every mnstream command shares: exit codes, its console, the stopping signals and how errors end it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator

from rich.console import Console

from stream.types import MnstreamError, first_line


def exit_code_of(signum: int) -> int:
    """The shell's code for a run ended by a signal: 128 + its number."""
    return 128 + signum


STOPPING_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
"""A closed terminal or dropped SSH session, Ctrl-C, and `kill`: each finishes the run cleanly."""
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_BROKEN_PIPE = 0, 1, 2, 141
EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED = (exit_code_of(signum) for signum in STOPPING_SIGNALS)
EXIT_CODES_HELP = (
    f"Exit codes: {EXIT_OK} ok, {EXIT_FAILURE} runtime failure, {EXIT_USAGE} bad usage, {EXIT_HANGUP} hung up, "
    f"{EXIT_INTERRUPTED} interrupted (Ctrl-C), {EXIT_TERMINATED} terminated.\n"
)
"""The last line of the help of the commands that run to an end (export, train, evaluate)."""


def run_command(body: Callable[[Stopping], int], *, debug: bool) -> int:
    """Runs a command with the stopping signals handled, and maps how it ends to its exit code.

    Ctrl-C is handled too, because a shell that starts us in the background has it ignored, and an interrupt must
    still let a command close its outputs.

    Args:
        body: The command; it may set `Stopping.stop` to finish cleanly on the first signal, and returns its exit
            code.
        debug: Print the traceback before the one-line message.

    Returns:
        The body's code, or the signal's once one stopped it; 1 or 2 for errors (see `report_error`), 141 when
        the program reading our output has gone.
    """
    stopping = Stopping()
    previous = {signum: signal.signal(signum, stopping) for signum in STOPPING_SIGNALS}
    try:
        code = body(stopping)
        return code if stopping.received is None else exit_code_of(stopping.received)
    except Terminated as terminated:
        return terminated.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        if BrokenPipeError in (type(error), type(error.__cause__)):
            # Whatever read our standard output has gone (`| head`): stop quietly, as command-line tools do, and
            # let Python's last flush go nowhere instead of failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        return report_error(error, debug=debug)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def quiet_native_logging() -> None:
    """Silences FFmpeg's and OpenCV's own warnings for every file they fail to open: a command says it once, with
    the fix. Only a command's process does this, before OpenCV loads (it reads its level as it loads); the library
    leaves its caller's environment alone.
    """
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def report_error(error: Exception, *, debug: bool) -> int:
    """Prints the one-line message every mnstream command ends with (after the traceback, with --debug).

    Returns:
        The exit code: the error's own for mnstream's errors (2 for bad usage), 1 for anything unexpected.
    """
    if debug:
        traceback.print_exception(error)
    code = error.exit_code if isinstance(error, MnstreamError) else EXIT_FAILURE
    # An unexpected error's message (Ray's, a native library's) can run to many lines; --debug shows them all.
    message = str(error) if isinstance(error, MnstreamError) else f"{type(error).__name__}: {first_line(error)}"
    print(f"mnstream: error: {message}", file=sys.stderr)
    return code


class Terminated(KeyboardInterrupt):
    """A second SIGTERM or SIGHUP, handled like a second Ctrl-C: out at once, though the output is still closed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = exit_code_of(signum)


class Stopping:
    """The handler of the stopping signals: the first one calls `stop`, where the command has set it, so a run
    finishes cleanly (the summary counts exactly the frames in the output); a second one, or one that comes
    before there is anything to stop (no `stop`, or one that returns False), interrupts at once.
    """

    def __init__(self) -> None:
        self.stop: Callable[[], bool | None] | None = None
        self.received: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if self.stop is None or not first or self.stop() is False:
            raise _interrupt(signum)

    def raise_if_received(self) -> None:
        """Raises the interrupt that a signal asked for where its handler's exception was lost: Python drops one
        raised while a garbage-collection callback runs ("Exception ignored in ...") and goes on.

        Raises:
            KeyboardInterrupt: A signal came and the command has no `stop`.
        """
        if self.received is not None and self.stop is None:
            raise _interrupt(self.received)


def _interrupt(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


class CommandConsole(Console):
    """The console of mnstream's commands: as wide as a log file needs, and quiet when its reader goes away."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        if not self.is_terminal and "COLUMNS" not in os.environ:
            # A log file has no right edge; 80 columns would cut stream names and numbers out of the tables.
            self.width = 160

    def on_broken_pipe(self) -> None:
        # rich's own answer is SystemExit(1) from whichever thread was writing; raising the error instead lets
        # the run end through its shutdown, which closes the outputs, and `run` reports it as a closed pipe.
        self.quiet = True
        raise BrokenPipeError


def hold_standard_descriptors() -> None:
    """Puts /dev/null on standard input, output or error where the caller closed them (`2>&-`): a file opened
    later would take the free number, and native code writing to standard error would write into our output.
    """
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number, which is this one


class _LinesOnStandardError(logging.Handler):
    """The stages' warnings (a camera lost and found again, a skipped image) as plain lines on standard error,
    apart from the results on standard output.

    Each goes to whatever `sys.stderr` is when it comes, so that rich's live progress bar, which stands in for it
    while it runs on a terminal, prints the line above itself.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
            print(f"mnstream: {level}{record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def logging_to_standard_error() -> Iterator[None]:
    """Routes the `stream` loggers to `_LinesOnStandardError` for one command, then puts back what was there."""
    logger = logging.getLogger("stream")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [_LinesOnStandardError()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
