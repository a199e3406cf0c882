"""``python -m stsynth_lib.predict``: the command line of :mod:`stsynth_lib.predict.cli`."""

import sys

from stsynth_lib.predict.cli import main

sys.exit(main())
