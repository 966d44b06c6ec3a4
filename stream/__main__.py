"""`python -m stream`, the same as the `mnstream` command."""

import sys

from stream.cli import main

sys.exit(main())
