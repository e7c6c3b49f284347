"""One kind of error for the user's mistakes.

Bad input (a missing file, a wrong flag value, a checkpoint that does not match its
config) is not a bug in this program, so it should not end in a Python traceback.
Library code raises `UserError` with a message that names the file and the problem;
the command-line entry points catch it, print that one line and exit with status 2
(the status argparse uses for bad arguments). Anything else is a real bug and keeps
its traceback.
"""

import sys


class UserError(Exception):
    """A problem with the user's input, reported as one line, exit status 2."""


def run_cli(main, argv=None) -> int:
    """Run `main(argv)`; turn a UserError into one line on stderr and exit code 2."""
    try:
        return main(argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
