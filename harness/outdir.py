"""The output directory of a run (--out): who may write there, and what its files mean.

A finished run leaves in --out:

    model.safetensors, config.json   the fine-tuned model, Hugging Face's layout
    vocab.json, merges.txt           its tokenizer, so the directory is a complete model
      or tokenizer.json              (the model's own form, added tokens included)
    run_args.json                    what was asked, and what it resolved to
    train_results.json               the train metrics block
    eval_results.json                the eval metrics block
    all_results.json                 both of them in one dict, as run_clm writes it
    log_history.json                 every log line and evaluation
    log.jsonl                        the same, one JSON line each, written as they happen
    status.json                      what the rest of the directory is (see below)
    resume.pt                        only while a run is interrupted (checkpoint.py)
    checkpoint-<step>/               with --save-every: a model and its resumable state (checkpoints.py)
    best/                            with --save-best: the best evaluation's model

Three rules keep such a directory trustworthy:

1. One run at a time. `RunDir.claim` takes an exclusive lock (`fcntl.flock`) on
   OUT/.lock for as long as the run lasts; a second run on the same --out is refused
   in one line. The kernel drops the lock when its process dies, however it dies, so
   a lock left by a killed run is simply taken over: there is no stale lock to
   delete by hand.
2. status.json says what the rest is: "running" from the first step, "saving" while
   the final files are written, "failed" (with the reason) or "interrupted", "done"
   with a note when the model is saved but the final evaluation was not (a stop
   signal, or the evaluation ran out of memory); once
   every final file is written it is removed (a finished run is what its results
   say). A kill in the middle of the final save leaves "saving", so neither the table
   of runs nor evaluate.py takes a half-saved directory for a finished run; the
   status turns "done" (noted) once the model and its results are written, before the
   final evaluation, which a kill may cut. With --overwrite, the old run's result
   files and its model are removed first: old results never sit beside new weights, and
   an overwriting run that stops leaves no old model that looks like its own.
3. Nothing planted in the directory is followed. The lock file is opened with
   O_NOFOLLOW and must be a regular file with one name (a link to another file would be
   truncated); every other file is written by a rename (files.py), which replaces a
   link instead of writing through it; a name the run writes that is a directory (or a
   device) is refused before the run; best/ must be a real directory. --overwrite
   removes only what this tool writes: the names below, the model files in best/,
   TensorBoard's event files in runs/; anything else there stays, and is named.
4. A full or read-only disk is found before the training, not after it: `claim`
   checks that OUT is writable and that its disk has room for the checkpoint and
   resume.pt. Every file is written atomically (files.py), and the temporary files
   of a save that was killed are removed when the next run claims the directory.
"""

import fcntl
import os
import re
import resource
import shutil
import socket
import stat
import sys
import time


from gpt2.errors import UserError
from gpt2.files import atomic_path, is_temporary, read_json, write_json
from gpt2.lora import adapter_dir, merged_model, save_adapter
from gpt2.weights import save_checkpoint
from .hub import ALIASES

LOCK = ".lock"
STATUS = "status.json"
# Everything a run writes; --overwrite removes the old run's before the new run starts.
RESULT_FILES = ("run_args.json", "train_results.json", "eval_results.json", "all_results.json",
                "log_history.json", "log.jsonl", STATUS)
STATE_FILES = ("resume.pt",)  # and the checkpoint-<step>/ folders (checkpoints.py); resume-<step>.pt: older runs
RESULT_DIRS = ("best", "runs")
# The files of a model directory (OUT itself, and best/): weights, config, tokenizer, adapter.
MODEL_FILES = ("model.safetensors", "config.json", "vocab.json", "merges.txt", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "adapter_model.safetensors",
               "adapter_config.json")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TENSORBOARD_FILE = re.compile(r"events\.out\.tfevents\..*")
# A checkpoint-<step>/ folder's files (checkpoints.py): a model, its run's flags and its state.
CHECKPOINT_FILES = MODEL_FILES + ("run_args.json", "trainer_state.json", "resume.pt",
                                  os.path.join("adapter", "adapter_model.safetensors"),
                                  os.path.join("adapter", "adapter_config.json"))


def check(out, overwrite=False, state=None):
    """The cheap checks, before any model is loaded: never lose a checkpoint.

    state: the resumable state a run continues from (--resume: OUT/resume.pt), if any.
    Continuing the run of OUT needs that state; any other run needs an empty OUT, or
    --overwrite.
    """
    path = os.path.abspath(out)
    while not os.path.exists(path):  # the nearest part of the path that exists
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        where = "" if path == os.path.abspath(out) else f" {path}"
        raise UserError(f"--out {out}:{where} exists and is not a directory")
    if state is not None and not os.path.isfile(state):
        raise UserError(f"--resume: {state} not found; nothing to resume in {os.path.dirname(state) or '.'}")
    if continues(state, out):
        return
    if _used(out) and not overwrite:
        raise UserError(f"--out {out}: directory is not empty; use --overwrite to replace its contents, "
                        f"--resume to continue a run, or another --out")


def state_file(path) -> str:
    """--resume-from-checkpoint PATH: the state file itself, or the resume.pt of a directory."""
    return os.path.join(path, "resume.pt") if os.path.isdir(path) else path


def continues(state, out) -> bool:
    """Does resuming from `state` continue the run of `out` (the state lies in it, or in one
    of its checkpoint-<step>/ folders)?"""
    if state is None or not os.path.isdir(out):
        return False
    directory = os.path.dirname(os.path.abspath(state))
    if re.fullmatch(r"checkpoint-\d+", os.path.basename(directory)):
        directory = os.path.dirname(directory)
    return os.path.samefile(directory, out)


def _used(out) -> bool:
    """Does `out` hold anything but our lock file and the litter of killed saves?"""
    if not os.path.isdir(out):
        return False
    return any(name != LOCK and not is_temporary(name) for name in os.listdir(out))


class RunDir:
    """--out of one run. Only the process that writes (rank 0) acts; the others' calls do nothing."""

    def __init__(self, path, is_main=True):
        self.path, self.is_main = path, is_main
        self._lock = None
        self._started = False

    def file(self, name):
        return os.path.join(self.path, name)

    # --- the run's claim on the directory --------------------------------------------
    def claim(self, overwrite=False, state=None, need_bytes=0, add=False, model_dir=None):
        """Lock the directory for this run, clean it, check the disk (start() marks it running).

        state: the resumable state the run continues from (see `check`). add: only add
        result files beside what is there (--do_eval alone): nothing is removed. model_dir: where
        the run's model was read from; when that is OUT itself, its files stay until replaced.
        """
        if not self.is_main:
            return self
        if not add:
            check(self.path, overwrite, state)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {self.path}: cannot create it ({e.strerror})") from None
        self._lock = _take_lock(self.file(LOCK), self.path)  # also proves that OUT is writable
        if add:
            return self
        try:
            check(self.path, overwrite, state)  # again, under the lock: another run may have just begun
            _check_names(self.path)
            _check_room(self.path, need_bytes)  # before anything is removed: a refusal loses nothing
            self._clean(keep_results=continues(state, self.path), keep_model=_same_dir(model_dir, self.path))
        except BaseException:
            self.release()
            raise
        return self

    def start(self, run_args=None):
        """status "running": from here on the directory is this run's, and a failure is recorded.
        (Until then, a command refused on its --resume state leaves status.json as it was.)
        run_args.json is written now too, not only at the end: a run stopped or still going
        says what it is (the table of runs), and evaluate.py finds its validation text."""
        self._started = True
        self.set_status("running", pid=os.getpid(), host=socket.gethostname(), started=time.time())
        if run_args is not None and self.is_main:
            write_json(self.file("run_args.json"), run_args)

    def release(self):
        if self._lock is not None:
            # Unlink first, then unlock: a run that opened the file just before it was
            # unlinked finds it gone when it checks (see _take_lock), and retries.
            if os.path.exists(self.file(LOCK)):
                os.remove(self.file(LOCK))
            self._lock.close()  # closing the descriptor drops the flock
            self._lock = None

    def _clean(self, keep_results, keep_model=False):
        """Remove the temporary files of killed saves; unless the run goes on, the old run's results.

        Only what this tool writes is removed (see the module docstring); what else is in
        best/ or runs/ stays where it is, and one line names it.
        """
        for directory in (self.path, self.file("best")):
            if os.path.isdir(directory):
                for name in os.listdir(directory):
                    if is_temporary(name):  # a file, or a checkpoint-<step>.tmp-<pid>/ folder
                        _remove(os.path.join(directory, name))
        if keep_results:
            return
        try:
            for name in os.listdir(self.path):
                if name in RESULT_FILES + STATE_FILES or re.fullmatch(r"resume-\d+\.pt", name):
                    os.remove(self.file(name))
                elif name in MODEL_FILES and not keep_model and stat.S_ISREG(os.lstat(self.file(name)).st_mode):
                    os.remove(self.file(name))  # the old model: never taken for the new run's if it stops
            kept = [] if keep_model else _remove_ours(self.file("adapter"), lambda rel: rel in MODEL_FILES)
            kept += _remove_ours(self.file("best"), lambda rel: rel in MODEL_FILES)
            kept += _remove_ours(self.file("runs"), lambda rel: rel.count(os.sep) == 1 and
                                 TENSORBOARD_FILE.fullmatch(os.path.basename(rel)) is not None)
            for name in os.listdir(self.path):  # checkpoint-<step>/: a model and its state (checkpoints.py)
                if re.fullmatch(r"checkpoint-\d+", name):
                    kept += _remove_ours(self.file(name), lambda rel: rel in CHECKPOINT_FILES)
        except OSError as e:
            raise UserError(f"--out {self.path}: cannot remove the old run's {e.filename} ({e.strerror}); "
                            f"nothing of the new run was written yet") from None
        if kept:
            more = f" and {len(kept) - 3} more" if len(kept) > 3 else ""
            print(f"warning: --overwrite kept what this tool did not write: {', '.join(kept[:3])}{more}",
                  file=sys.stderr)

    # --- writing -------------------------------------------------------------------
    def set_status(self, status, **extra):
        if self.is_main:
            write_json(self.file(STATUS), {"status": status, **extra})

    def record_failure(self, status, message):
        """status.json for a run that ends in an error; never raises (the error itself must be seen)."""
        if not self._started:
            return  # refused before it began: the directory still describes what was there
        try:
            self.set_status(status, reason=message.split("; ")[0] or status, message=message)
        except OSError:
            pass  # the disk that failed the run may refuse this file too

    def write_json(self, name, obj):
        if self.is_main:
            write_json(self.file(name), obj)

    def merge_results(self, split, metrics):
        """<split>_results.json, and the same keys updated in all_results.json (as the Trainer's save_metrics)."""
        if self.is_main:
            self.write_json(f"{split}_results.json", metrics)
            try:
                merged = read_json(self.file("all_results.json"), {}, kind=dict)
            except UserError as e:  # the new metrics are kept whatever the old file holds
                print(f"warning: {e}; all_results.json now holds the new metrics only", file=sys.stderr)
                merged = {}
            self.write_json("all_results.json", {**merged, **metrics})

    def remove(self, name):
        if self.is_main and os.path.exists(self.file(name)):
            os.remove(self.file(name))

def copy_files(paths, directory):
    for src in paths:
        with atomic_path(os.path.join(directory, os.path.basename(src))) as tmp:
            shutil.copyfile(src, tmp)


def check_finished(model_dir):
    """--model DIR where DIR is a run of train.py: only a finished one (status.json) is a model."""
    status = run_status(model_dir)
    state = status.get("status")
    if state in ("running", "saving", "stopped", "failed", "interrupted"):
        reason = f": {status['reason']}" if status.get("reason") else ""
        raise UserError(f"--model {model_dir}: its run is not finished (status.json: {state}{reason}), so its "
                        f"files may not be one model; finish it with --resume, or start from another model")


def save_model(run, directory, base_model, weights=None):
    """A complete model directory (OUT, best/, a checkpoint folder): the weights, config.json and
    the model's own tokenizer; with LoRA, the merged weights and the adapter in adapter/
    (base_model: what the adapter's config names as its base; weights: the state to write, if
    not the model's own). Called by the main process."""
    model = run.model
    save_checkpoint(merged_model(model) if getattr(model, "lora_config", None) else model, directory,
                    config=getattr(run, "saved_config", None),  # without this run's --dropout
                    state=weights)  # --fsdp: the weights gathered from the shards
    copy_files(run.tokenizer.files, directory)
    # No other tokenizer's files: a vocab.json left by an earlier run beside a new
    # tokenizer.json would describe another vocabulary.
    ours = {os.path.basename(p) for p in run.tokenizer.files}
    for name in TOKENIZER_FILES:
        other = os.path.join(directory, name)
        if name not in ours and os.path.lexists(other) and not os.path.isdir(other):
            os.remove(other)
    if getattr(model, "lora_config", None):
        # A local base as an absolute path: peft opens the adapter from any directory.
        local = os.path.isdir(base_model) and base_model not in ALIASES
        save_adapter(model, adapter_dir(directory), base_model=os.path.abspath(base_model) if local else base_model)


def _same_dir(a, b) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _remove(path):
    """A file, or a folder with what is in it; a link only as a link (never followed)."""
    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def _take_lock(path, out):
    """An exclusive flock on `path`, held until the file object is closed.

    O_NOFOLLOW: a symbolic link planted as OUT/.lock is refused, never followed; and the
    file must be a regular file with a single name, since the lock truncates it (a hard
    link to another file of the user's would be emptied).
    """
    while True:
        f = _open_lock(path, out)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read(200).strip() or "another process"
            f.close()
            raise UserError(f"--out {out}: another run is using this directory ({holder}); "
                            f"wait for it to end, or use another --out") from None
        # The run before us may have removed the file between our open and our lock:
        # then we hold a lock on a file nobody else will see. Check, and start again.
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.lstat(path))
        except FileNotFoundError:
            same = False
        if same:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}")
            f.flush()
            return f
        f.close()


def _open_lock(path, out):
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise UserError(f"--out {out}: {path} is a symbolic link; a lock file is never followed: "
                            f"remove it") from None
        raise UserError(f"--out {out}: cannot write there ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "has another name (a hard link)" if stat.S_ISREG(st.st_mode) else "is not a regular file"
        raise UserError(f"--out {out}: {path} {what}; the lock would truncate it: remove it")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a+")


def _check_names(out):
    """Each name the run writes a file under must be free, a file, or a link (a rename replaces it)."""
    for name in RESULT_FILES + STATE_FILES + MODEL_FILES + (LOCK,):
        try:
            mode = os.lstat(os.path.join(out, name)).st_mode
        except FileNotFoundError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise UserError(f"--out {out}: {name} is a directory or a device, where the run writes a file; move it")
    for name in RESULT_DIRS:
        path = os.path.join(out, name)
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            raise UserError(f"--out {out}: {name} is not a directory of its own (a link, or a file); "
                            f"the run writes in it: move it")


def _remove_ours(directory, ours) -> list:
    """Remove the regular files under `directory` for which ours(relative path) holds, and the
    folders left empty; return the paths of what stays. Links are never followed."""
    if not os.path.isdir(directory) or os.path.islink(directory):
        return []
    kept = []
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(path).st_mode) and ours(os.path.relpath(path, directory)):
                os.remove(path)
            else:
                kept.append(path)
        if not os.listdir(root):
            os.rmdir(root)
    return kept


def _check_room(out, need_bytes):
    # `ulimit -f` (RLIMIT_FSIZE) caps each file this process writes: resume.pt, the largest,
    # is about the half of need_bytes that is not the final model (checkpoint.bytes_needed).
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < need_bytes // 3:
        raise UserError(f"--out {out}: files are limited to {limit / 2**20:,.0f} MB (ulimit -f), but resume.pt "
                        f"needs about {need_bytes / 3 / 2**20:,.0f} MB; raise the limit (ulimit -f unlimited)")
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise UserError(f"--out {out}: {free / 2**20:,.0f} MB free on its disk, but the checkpoint and "
                        f"resume.pt need about {need_bytes / 2**20:,.0f} MB; free some space or use another --out")


def run_status(directory) -> dict:
    """status.json of a run directory, with "running" corrected to "stopped" when no process holds the lock."""
    status = read_json(os.path.join(directory, STATUS), {}, kind=dict)
    if status.get("status") in ("running", "saving") and not _locked(os.path.join(directory, LOCK)):
        status = {**status, "status": "stopped",
                  "reason": f"killed while {status['status']} (no process holds the lock)"}
    return status


def _locked(path) -> bool:
    try:
        with open(path, opener=lambda p, _: os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no lock file, or a planted link: nobody holds it
        return False
    return False
