"""``python -m stsynth_lib.publish``: the command line of :mod:`stsynth_lib.publish.cli`."""

import sys

from stsynth_lib.publish.cli import main

sys.exit(main())
