"""``python -m stsynth_lib.book.publish``: the command line of :mod:`stsynth_lib.book.publish.cli`."""

import sys

from stsynth_lib.book.publish.cli import main

sys.exit(main())
