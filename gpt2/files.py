"""Writing files so that a crash never leaves half of one behind.

A checkpoint written in place and interrupted (Ctrl-C, a killed job, a full disk) is
a corrupt checkpoint, and maybe the only copy of hours of training. So every file
this project writes goes first to a temporary name *in the same directory*, is
flushed to disk, and is then renamed over the final name with `os.replace`.

A rename is atomic, a reader sees either the old file or the new one, never a mix,
but only within one filesystem: across two filesystems `os.replace` fails (or,
for other tools, becomes a copy that can be cut in the middle). The directory of the
final file is the one place certain to be on its filesystem, hence the temporary
name beside it: `model.safetensors.tmp-<pid>`.

The temporary files of a save that was killed stay behind under those names;
`is_temporary` recognises them, so that the next run removes them (outdir.py) and
no listing mistakes them for results.

Files get the permissions the user's umask gives (usually rw-r--r--), whatever the
library that wrote them chose (safetensors creates its files readable by their owner
only, so another user would be told the file does not exist).
"""

import contextlib
import errno
import json
import os
import re

from safetensors import SafetensorError

from .errors import UserError

_TEMPORARY = re.compile(r"\.tmp-\d+$")


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return mask


def is_temporary(name: str) -> bool:
    """Is this file name one of atomic_path's temporary names?"""
    return _TEMPORARY.search(name) is not None


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path; on success it replaces `path` atomically, on error it is removed."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename, or a power cut could leave an empty file
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def library_write(path: str):
    """Around torch.save or safetensors' save_file: their failures to write are OSErrors too.

    A full disk (or a file size limit) reaches Python as OSError from open() and write(),
    but libraries that write in C++ or Rust report it in their own exception types, with
    messages that need not say so (torch: RuntimeError "unexpected pos 704 vs 598",
    safetensors: SafetensorError "I/O error: File too large"). These calls only
    serialize tensors and write them, so their RuntimeError is a failure to write: as an
    OSError naming the file it ends the run in one line (errors.py).
    """
    try:
        yield
    except OSError:
        raise
    except (RuntimeError, SafetensorError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OSError(errno.EIO, f"cannot write it ({message[:200]})", path) from None


def write_json(path: str, obj) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


def read_json(path, default=None):
    """The parsed file, `default` if it does not exist, a one-line UserError if it is not JSON."""
    if not os.path.exists(path):
        return default
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None
