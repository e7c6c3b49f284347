"""One kind of error for the user's mistakes.

Bad input (a missing file, a wrong flag value, a checkpoint that does not match its
config) is not a bug in this program, so it should not end in a Python traceback.
Library code raises `UserError` with a message that names the file and the problem;
the command-line entry points catch it, print that one line and exit with status 2
(the status argparse uses for bad arguments).

Two more kinds of ending are the machine's, not the program's, and get one line too:
an OSError the library did not expect (a disk that fills up or turns read-only in the
middle of a save: the line names the file and the system's reason, exit 1), running
out of memory (MemoryError, or torch's RuntimeError saying so: exit 1), and a
second Ctrl-C (or SIGTERM...), which stops at once (exit 130, the shell's code for
SIGINT; the first is handled by the run itself, see harness/signals.py), and, under
torchrun, another process of the run that died (distributed.lost_a_process: exit 1).
Anything else is a real bug and keeps its traceback. Under torchrun a user error found
before the processes meet (a bad flag: every process finds it) is printed by rank 0 alone.
"""

import sys


class UserError(Exception):
    """A problem with the user's input, reported as one line, exit status 2."""


class NonFiniteLoss(UserError):
    """The loss, or the weights, stopped being finite numbers: the run cannot go on."""


def out_of_memory(e: BaseException) -> bool:
    """Is this the machine running out of memory? (torch raises RuntimeError for the CPU's.)"""
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text


# What frees memory in training; evaluate.py passes its own advice.
TRAINING_MEMORY_ADVICE = ("a smaller --batch-size (with --grad-accum), --block-size, --checkpointing or --lora "
                          "needs less; the last resumable state, if any, is kept")


def printable(text: str) -> str:
    """A message naming a file whose name is not UTF-8 (Python keeps its bytes as surrogates,
    \udcff): the bytes as escapes, \xff, as the shell's ls -b writes them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def run_cli(main, argv=None, memory_advice=TRAINING_MEMORY_ADVICE) -> int:
    """Run `main(argv)`; turn a UserError, an OSError or Ctrl-C into one line on stderr."""
    try:
        return main(argv) or 0
    except UserError as e:
        from .distributed import is_first_rank_or_alone  # (torch is loaded by then)
        if is_first_rank_or_alone():  # under torchrun: once per run, not once per process
            print(f"error: {printable(str(e))}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        from .distributed import lost_a_process
        if lost_a_process(e):  # another process died: our one line, not the backend's traceback
            print(f"error: {lost_a_process(e)}", file=sys.stderr)
            return 1
        if not out_of_memory(e):
            raise  # a real bug: its traceback
        first = (str(e).splitlines() or ["MemoryError"])[0][:200]
        print(f"error: out of memory ({first}); {memory_advice}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(printable(f"error: {where}{e.strerror or e} (nothing half-written was left under a final name)"),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # harness/signals.py says which signal, and if it came twice
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}): stopped at once", file=sys.stderr)
        return 130
