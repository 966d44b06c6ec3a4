"""`python -m stream.bench`: the benchmark, and the child process that measures one of its rows."""

import sys

from stream.commands import quiet_native_logging

# Before OpenCV loads with the benchmark: it reads its log level as it loads.
quiet_native_logging()

from stream.bench.cli import main

sys.exit(main(sys.argv[1:]))
