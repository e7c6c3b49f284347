"""The terminal must never cost a run: stdout and stderr that fail, or cannot spell a character.

A run prints as it goes: its header, a log line now and then, the metric blocks. Those
lines go wherever the user sent them: a terminal, `| head -20`, a file on a disk that
may fill up, an ASCII-only console. Any of those can make a `print` fail:

* the reader of a pipe went away (`| head` has its 20 lines): BrokenPipeError (EPIPE);
* the disk of a redirected stdout is full (ENOSPC; here, not in --out, which was
  checked before training), or the terminal is gone (EIO after a closed ssh session);
* the stream's encoding cannot spell a character (PYTHONIOENCODING=ascii, LC_ALL=C, a
  file name or prompt in another script): UnicodeEncodeError.

Unhandled, each of these raises in the middle of a step, and the run ends without
saving anything, though nothing was wrong with the training. So `guard` wraps both
streams: a character the encoding lacks is written as an escape ("\\xe9"); a stream
whose writes fail is sent to /dev/null (its file descriptor too, so that the
interpreter's last flush at exit does not fail either) and the run trains on, with one
warning on the other stream if that one still works. Everything the run records is in
--out anyway (log.jsonl, the results): the screen was only a view of it.
"""

import io
import os
import sys


class GuardedStream(io.TextIOBase):
    """A text stream that writes to `stream` until a write fails, then to nowhere."""

    def __init__(self, stream, name, warn):
        self._stream, self._name, self._warn = stream, name, warn
        self.failed = None  # the OSError that ended the writes, if any

    def write(self, text):
        if self.failed is None:
            try:
                self._stream.write(text)
            except OSError as e:
                self._give_up(e)
        return len(text)

    def flush(self):
        if self.failed is None:
            try:
                self._stream.flush()
            except OSError as e:
                self._give_up(e)

    def _give_up(self, error):
        """Send this stream (and its file descriptor) to /dev/null; say so once on the other."""
        self.failed = error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # the interpreter's own flush at exit goes there too
            os.close(devnull)
            self._stream.flush()  # what was buffered now goes to /dev/null
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        self._warn(f"warning: {self._name} failed ({error.strerror or error}); the run goes on without "
                   f"printing there (its log is in --out's log.jsonl)")

    # What print, tqdm and the progress lines ask a stream.
    def isatty(self):
        return self.failed is None and self._stream.isatty()

    def fileno(self):
        return self._stream.fileno()

    def writable(self):
        return True

    @property
    def encoding(self):
        return self._stream.encoding

    @property
    def errors(self):
        return self._stream.errors


def guard():
    """Wrap sys.stdout and sys.stderr (see the module docstring); call once, at the start of a program."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, GuardedStream) or stream is None:
            continue
        if hasattr(stream, "reconfigure"):
            try:  # a character the encoding lacks: an escape, not a UnicodeEncodeError
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, io.UnsupportedOperation):
                pass
        setattr(sys, name, GuardedStream(stream, name, warn=_warner(name)))


def _warner(name):
    """Print a warning on the other stream, unless that one failed too."""
    other = "stderr" if name == "stdout" else "stdout"

    def warn(line):
        try:
            print(line, file=getattr(sys, other), flush=True)
        except Exception:  # noqa: BLE001  (a warning must never be what stops the run)
            pass

    return warn
