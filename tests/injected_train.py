"""train.py with the faults of tests/injections.py installed, each inert until its variable is set.

    KILL_AT=4 python tests/injected_train.py --save-every 2 ...   # train.py, killed after its step-4 save
"""

import os
import runpy
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
sys.path[:0] = [ROOT, TESTS]

import injections  # noqa: E402

injections.install()
sys.argv[0] = os.path.join(ROOT, "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
