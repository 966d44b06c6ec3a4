"""The `mnstream` process: the installed command and `python -m stream` start here."""

import os
import signal
import sys
import threading


def main() -> int:
    """Runs the command line and returns its exit code, the process's own.

    Until the command line has set its own handlers, a signal ends the process quietly with the shell's code for
    it: a Ctrl-C in the first half second, while numpy, OpenCV and rich load, is no error worth a traceback.
    """
    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, _exit_quietly)
    try:
        from stream.commands import quiet_native_logging

        quiet_native_logging()
        from stream.cli import main as run_command

        code = run_command()
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    if any(thread.is_alive() for thread in threading.enumerate() if thread is not threading.main_thread()):
        # A thread left inside native code (TensorFlow or h5py loading a model, a driver call) crashes or hangs the
        # interpreter's shutdown, which tears down the libraries under it: leave without one. The outputs are
        # closed by now; only what was printed may still be buffered.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return code


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
