"""Finding a model's files on disk, or downloading them from the Hugging Face hub.

A GPT-2 model is four files: `config.json` (its shape), `model.safetensors` (the
weights), and the tokenizer's `vocab.json` and `merges.txt`. `resolve` turns what the
user typed into a local directory that holds them:

- an existing directory (a checkpoint of ours, or files put there by hand) is used
  as it is;
- a short name like `gpt2` or a hub id like `openai-community/gpt2` is looked up in
  the weights folder (`weights/` at the repository root, or $GPT2_WEIGHTS_DIR), as
  `weights/gpt2` or `weights/openai-community/gpt2`; whatever is missing there is
  downloaded once from `{endpoint}/{repo}/resolve/main/{file}`, the URL every
  Hugging Face client uses. After that, no network is needed.

Downloading, with everything it must not trust, is download.py. The address of the
server is `HF_ENDPOINT` when set (the Hugging Face tools read it too); it may hold a
user name and password (https://user:secret@mirror/), which no message ever shows.
"""

import os
import re
import urllib.parse

from gpt2.errors import UserError

from .download import download, url_problem

# Short names -> hub repository ids (the hub moved the original models under these orgs).
ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
# config.json comes first: the size cap of model.safetensors is computed from it.
FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
DEFAULT_ENDPOINT = "https://huggingface.co"
# A hub id is `org/name`: one slash, letters, digits, '.', '_', '-', not starting with '.' or '-'.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_hub_id(name: str) -> bool:
    """Does `name` look like a hub repository id, org/name?"""
    return _HUB_ID.fullmatch(name) is not None


def default_weights_dir() -> str:
    """`weights/` next to the gpt2 package, unless $GPT2_WEIGHTS_DIR says otherwise."""
    if os.environ.get("GPT2_WEIGHTS_DIR"):
        return os.path.expanduser(os.environ["GPT2_WEIGHTS_DIR"])
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


# --- the server's address ---------------------------------------------------------

def endpoint() -> str:
    """The base URL to download from: $HF_ENDPOINT if set and not empty, else the hub."""
    value = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    problem = url_problem(value)
    if problem is None and (urllib.parse.urlsplit(value).query or "#" in value):
        problem = "a base URL cannot have a ?query or #fragment"
    if problem:
        raise UserError(hide_password(f"HF_ENDPOINT {value!r}: {problem}"))
    return value.rstrip("/")


def hide_password(text: str) -> str:
    """`text` with the password of HF_ENDPOINT (https://user:secret@host) shown as ***.

    Error messages end up in logs, CI output and bug reports; a password must not."""
    value = os.environ.get("HF_ENDPOINT") or ""
    match = re.search(r"//[^/@]*?:([^/@]*)@", value)  # user:password@ of the authority
    if not match or not match.group(1):
        return text
    secret = match.group(1)
    for form in {secret, urllib.parse.unquote(secret), urllib.parse.quote(secret, safe="")}:
        text = text.replace(form, "***")
    return text


def check_endpoint() -> None:
    """Raise a one-line UserError now if $HF_ENDPOINT is unusable (for a CLI's start-up)."""
    endpoint()


# --- finding the files ------------------------------------------------------------

def resolve(name_or_path: str, weights_dir: str | None = None) -> str:
    """A local directory holding the model's files, downloading the missing ones."""
    weights_dir = weights_dir or default_weights_dir()
    path = os.path.expanduser(name_or_path)
    # A short name always means the hub model: the repository root has a folder named
    # `gpt2` (this package), and `--model gpt2` must not pick that up. Write ./gpt2
    # for a local folder of that name.
    if name_or_path in ALIASES:
        repo, local_dir = ALIASES[name_or_path], os.path.join(weights_dir, name_or_path)
    elif os.path.isdir(path):
        return path
    elif os.path.exists(path):  # checked before the hub id: "ckpt/model.safetensors" looks like one
        raise UserError(f"{name_or_path}: is a file, not a model directory")
    elif is_hub_id(name_or_path):
        repo, local_dir = name_or_path, os.path.join(weights_dir, *name_or_path.split("/"))
    elif path.startswith((".", "/", "~")) or os.sep in path or (os.altsep and os.altsep in path):
        raise UserError(f"{name_or_path}: no such directory")
    else:
        raise UserError(f"{name_or_path}: no such directory, and not a known model name "
                        f"({', '.join(ALIASES)}) or a hub id org/name")

    return _fetch_missing(repo, local_dir)


def _fetch_missing(repo: str, local_dir: str) -> str:
    """local_dir, after downloading whichever of FILES it lacks from the hub (download.py)."""
    missing = [f for f in FILES if not os.path.isfile(os.path.join(local_dir, f))]
    if not missing:
        return local_dir
    base = endpoint()  # a bad HF_ENDPOINT is reported before any folder is made
    new_dirs = _make_dirs(local_dir)
    by_hand = (f"Without network, put {', '.join(FILES)} for {repo} in {local_dir}/ "
               f"by hand, or set HF_ENDPOINT to a mirror.")
    try:
        for filename in missing:
            download(repo, filename, local_dir, base, by_hand)
    except BaseException as e:
        # Folders made for a download that left nothing in them are litter.
        for d in new_dirs:  # deepest first
            try:
                os.rmdir(d)
            except OSError:  # not empty (a file was kept): keep it and its parents
                break
        if isinstance(e, UserError):  # the server's address may hold a password: never shown
            raise UserError(hide_password(str(e))) from None
        raise
    return local_dir


def _make_dirs(local_dir: str) -> list[str]:
    """Create local_dir; return the folders that did not exist before, deepest first."""
    new_dirs, d = [], local_dir
    while d and not os.path.isdir(d):
        new_dirs.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(local_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {local_dir} ({e.strerror or e})") from None
    return new_dirs


