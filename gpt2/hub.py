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

Four habits make the download safe to interrupt and safe to trust:

- It streams into `<file>.part` and renames it to the final name only when it is
  complete, so a file with the final name is always a whole file (see files.py).
- An interrupted download keeps its `.part`; the next try asks the server for the
  rest only (an HTTP `Range: bytes=N-` header), so 500 MB are not fetched twice.
- The size the server announced (Content-Length) is checked, and for the files in
  `KNOWN_FILES` also the exact size and SHA-256, so a truncated or tampered file is
  an error rather than a model that loads and quietly produces nonsense.
- `HF_ENDPOINT` is the environment variable the Hugging Face tools read to use a
  mirror instead of https://huggingface.co; we honour the same one.

Only the standard library's urllib is used, so nothing else has to be installed.
"""

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request

from tqdm import tqdm

from .errors import UserError

# Short names -> hub repository ids (the hub moved the original models under these orgs).
ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")

# (repo, file) -> (size in bytes, sha256) of files whose content we know in advance.
KNOWN_FILES = {
    ("openai-community/gpt2", "model.safetensors"):
        (548105171, "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"),
}

# A hub id is `org/name`: one slash, letters, digits, '.', '_', '-', not starting with '.' or '-'.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_hub_id(name: str) -> bool:
    """Does `name` look like a hub repository id, org/name?"""
    return _HUB_ID.fullmatch(name) is not None
TIMEOUT_S = 30     # for connecting and for each read; a stalled server is an error, not a hang
CHUNK = 1 << 20    # read and write 1 MiB at a time


def default_weights_dir() -> str:
    """`weights/` next to the gpt2 package, unless $GPT2_WEIGHTS_DIR says otherwise."""
    if os.environ.get("GPT2_WEIGHTS_DIR"):
        return os.path.expanduser(os.environ["GPT2_WEIGHTS_DIR"])
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


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

    missing = [f for f in FILES if not os.path.isfile(os.path.join(local_dir, f))]
    if missing:
        os.makedirs(local_dir, exist_ok=True)
    for filename in missing:
        _download(repo, filename, local_dir)
    return local_dir


def _download(repo: str, filename: str, local_dir: str) -> None:
    """Fetch one file into local_dir/filename, resuming a .part left by an earlier try."""
    url = f"{endpoint()}/{repo}/resolve/main/{filename}"
    path = os.path.join(local_dir, filename)
    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "gpt2-teaching"})
    if have:
        request.add_header("Range", f"bytes={have}-")  # "send me byte `have` onwards"
    # (urllib follows the hub's redirect to its file CDN by itself, Range header included.)

    def offline(reason) -> UserError:
        return UserError(f"could not download {url} ({reason}). Without network, put "
                         f"{', '.join(FILES)} for {repo} in {local_dir}/ by hand, "
                         f"or set HF_ENDPOINT to a mirror.")

    total = None  # the full size, once the server tells us
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            if response.status == 206:  # Partial Content: the rest follows; append it
                got_range = response.headers.get("Content-Range", "")
                if not got_range.startswith(f"bytes {have}-"):
                    os.remove(part)
                    raise UserError(f"{url}: asked for bytes {have}- but got '{got_range}'; "
                                    f"the partial file was removed")
            else:  # 200: the server ignored the Range and sends the whole file; start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=filename)
            with open(part, "ab" if have else "wb") as f, bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        e.close()  # an HTTPError is also the open response; close its connection
        if e.code == 416 and have:  # Range Not Satisfiable: the .part already holds it all
            size = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range", ""))
            total = int(size[1]) if size else None  # ... or more than all: checked below
        elif e.code == 404:
            raise UserError(f"{url}: not found (404) — is '{repo}' a model repo "
                            f"on the hub with a {filename}?") from None
        elif e.code in (401, 403):  # what the hub answers for a private, gated or missing repo
            raise UserError(f"{url}: access denied ({e.code}) — '{repo}' may not exist, "
                            f"or be private or gated") from None
        else:
            raise UserError(f"{url}: the server answered {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        # URLError (no DNS, refused), timeouts and resets are all OSErrors. The .part
        # stays, so that the next try resumes where this one stopped.
        raise offline(getattr(e, "reason", None) or e) from None

    # A dropped connection does not raise: read() just returns b"" early. So compare
    # what we have with what the server said it would send.
    got = os.path.getsize(part)
    if total is not None and got < total:
        raise offline(f"the connection closed after {got} of {total} bytes; "
                      f"run again to resume")
    if total is not None and got > total:
        os.remove(part)
        raise UserError(f"{part}: {got} bytes, more than the {total} of {url}; "
                        f"the file was removed")
    _check(repo, filename, part, path)
    os.replace(part, path)


def _check(repo: str, filename: str, part: str, path: str) -> None:
    """Compare a finished download with KNOWN_FILES; on a mismatch delete it."""
    if (repo, filename) not in KNOWN_FILES:
        return
    want_size, want_sha = KNOWN_FILES[repo, filename]
    got_size = os.path.getsize(part)
    if got_size != want_size:
        os.remove(part)
        raise UserError(f"{path}: {got_size} bytes, but {want_size} were expected; "
                        f"the download was removed")
    h = hashlib.sha256()
    with open(part, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    if h.hexdigest() != want_sha:
        os.remove(part)
        raise UserError(f"{path}: sha256 {h.hexdigest()} does not match the expected "
                        f"{want_sha}; the download was removed")
