"""Writing files so that a crash never leaves half of one behind.

A checkpoint written in place and interrupted (Ctrl-C, a killed job, a full disk) is
a corrupt checkpoint, and maybe the only copy of hours of training. So every file
this project writes goes first to a temporary name in the same directory, is flushed
to disk, and is then renamed over the final name with `os.replace`, which is atomic:
a reader sees either the old file or the new one, never a mix.
"""

import contextlib
import json
import os


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path; on success it replaces `path` atomically, on error it is removed."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
