"""`python -m stream.bench`: the benchmark, and the child process that measures one of its rows."""

import sys

from stream.bench.cli import main

sys.exit(main(sys.argv[1:]))
