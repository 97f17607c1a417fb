"""Entry of the child process that runs the pycolmap stages: ``python -m engine.solve.child JOB.json``."""

import sys

from .sfm import main

raise SystemExit(main(sys.argv[1:]))
