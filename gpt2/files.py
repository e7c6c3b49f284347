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

In a directory others can write to (a shared project folder, /tmp), a name may already
be a symbolic link that someone planted: writing through it would overwrite whatever
it points to, with this user's rights. So no file is ever written through a link: the
temporary file is created new (O_EXCL: it fails rather than open what is there, and
O_NOFOLLOW: a link is never followed), and the rename replaces the final name itself,
a link there included, never the file a link points to.

Reading is guarded too. `read_json` reads regular files only (a link to /dev/zero, or a
FIFO, would never end), at most a set size, nested at most MAX_JSON_DEPTH deep and with
numbers of at most MAX_NUMBER_CHARS characters: a hand-edited or hostile file is
refused in one line, never a RecursionError or a parse that takes minutes.

Files get the permissions the user's umask gives (usually rw-r--r--), whatever the
library that wrote them chose (safetensors creates its files readable by their owner
only, so another user would be told the file does not exist).
"""

import contextlib
import errno
import json
import os
import re
import stat

from safetensors import SafetensorError

from .errors import UserError

_TEMPORARY = re.compile(r"\.tmp-\d+$")
MAX_JSON_DEPTH = 64          # config.json, tokenizer.json and results nest 4 deep at most
MAX_NUMBER_CHARS = 100       # no real value needs more; 1e400 digits would parse for minutes
MAX_JSON_BYTES = 256 << 20   # a large tokenizer.json is 20 MB


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
        _create_new(tmp)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename, or a power cut could leave an empty file
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _create_new(path: str) -> None:
    """Create `path` as a new, empty regular file of ours: never through a link planted there.

    A name left by a killed save of this same pid, or planted, is unlinked first (unlinking
    a link removes the link, not its target). The libraries then open this file by name.
    """
    if os.path.lexists(path):
        os.remove(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))


def open_regular(path: str, what: str = "file", max_bytes: int | None = None, hint: str = ""):
    """A binary file object for reading `path`, which must be a regular file of at most max_bytes.

    Opened without blocking (a FIFO would wait for a writer for ever) and checked on the
    descriptor itself (fstat), so a name swapped after a check cannot slip through.
    FileNotFoundError and other OSErrors pass through; the rest is a one-line UserError.
    """
    # (Through open() with an opener, not os.open alone: the file object closes the descriptor.)
    try:
        f = open(path, "rb", opener=lambda p, flags: os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a {what}") from None
    except OSError as e:
        if e.errno != errno.ENXIO:  # ENXIO: a socket, which cannot be opened at all
            raise
        raise UserError(f"{path}: not a regular file (a socket); the {what} must be a regular file") from None
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, a FIFO or a socket)"
            raise UserError(f"{path}: {kind}; the {what} must be a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise UserError(f"{path}: {st.st_size:,} bytes, more than the {max_bytes:,} a {what} may have{hint}")
        os.set_blocking(f.fileno(), True)
        return f
    except BaseException:
        f.close()
        raise


def read_capped(f, path: str, max_bytes: int, what: str = "file", hint: str = "") -> bytes:
    """All of an open file, refusing it if it grows past max_bytes while being read."""
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserError(f"{path}: more than {max_bytes:,} bytes (it grew while being read); "
                        f"a {what} may have at most that{hint}")
    return data


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


def _number(parse):
    def checked(text):
        if len(text) > MAX_NUMBER_CHARS:
            raise ValueError(f"a number of {len(text):,} characters (at most {MAX_NUMBER_CHARS} are read)")
        return parse(text)
    return checked


def _too_deep(value) -> bool:
    """Does `value` nest lists/objects more than MAX_JSON_DEPTH deep? (Iterative: no recursion.)"""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return True
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


# json.loads(text, **BOUNDED): numbers longer than MAX_NUMBER_CHARS are a ValueError.
BOUNDED = {"parse_int": _number(int), "parse_float": _number(float)}


def check_depth(value, where):
    """`value`, or a one-line UserError if it nests deeper than MAX_JSON_DEPTH."""
    if _too_deep(value):
        raise UserError(f"{where}: not readable JSON (nested more than {MAX_JSON_DEPTH} deep)")
    return value


def parse_json(text, where):
    """json.loads with bounded numbers and depth; a one-line UserError naming `where` otherwise."""
    try:
        value = json.loads(text, **BOUNDED)
    except RecursionError:  # [[[[... deeper than the parser recurses
        raise UserError(f"{where}: not readable JSON (nested more than {MAX_JSON_DEPTH} deep)") from None
    except ValueError as e:  # bad JSON, bad UTF-8, a number too long
        raise UserError(f"{where}: not readable JSON ({str(e).splitlines()[0][:200]})") from None
    return check_depth(value, where)


def read_json(path, default=None, kind=None, max_bytes=MAX_JSON_BYTES):
    """The parsed file, `default` if it does not exist, a one-line UserError if it is not JSON.

    kind: dict or list, the type the value must have (a status.json holding a string is
    as unreadable as one holding no JSON at all).
    """
    try:
        with open_regular(path, "JSON file", max_bytes) as f:
            data = read_capped(f, path, max_bytes, "JSON file")
    except FileNotFoundError:
        return default
    except OSError as e:
        raise UserError(f"{path}: not readable ({e.strerror or e})") from None
    value = parse_json(data, path)
    if kind is not None and not isinstance(value, kind):
        raise UserError(f"{path}: not a JSON {'object' if kind is dict else 'array'}")
    return value
