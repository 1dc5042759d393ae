"""``python -m benchmarks.soak``: the soak run (and each phase's process, ``--phase-child``)."""

import sys

from . import main

sys.exit(main())
