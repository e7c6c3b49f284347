"""Downloading one file of a model from the Hugging Face hub, trusting nothing it is sent.

hub.py decides which files a model needs and where they go; this module fetches one.
The server may be the hub, a mirror (`HF_ENDPOINT`, the environment variable the
Hugging Face tools read; we honour the same one), a proxy that answers with a login
page, or a broken or hostile machine. So the download trusts nothing it is sent:

- It streams into `<file>.part` and renames it to the final name only when it is
  complete and checked, so a file with the final name is always a whole, valid file.
- An interrupted download can be resumed: the next try asks only for the rest
  (`Range: bytes=N-`), so 500 MB are not fetched twice. But the rest must come from
  the *same version* of the file, or the result is half of one version glued to half
  of another. The server names each version with a "strong" `ETag` (a weak one,
  `W/"..."`, only promises similar content, not the same bytes). We keep it beside the
  partial file in `<file>.part.json` and resume with `If-Range: <etag>`, which means
  "send the rest if the file is still this version, else send all of it": a 206
  answer is appended, a 200 answer starts over from byte 0. Without a strong ETag a
  partial file cannot be trusted, so it is not resumed.
- Every file has a size cap: the size we know in advance (`KNOWN_FILES`), else a
  few MB for the small files, and for the weights what the model described by the
  config.json can need. A server that announces more is refused before anything is
  read, and a body that keeps coming is cut off, so a broken server cannot fill the
  disk. A transfer that stalls or trickles (less than MIN_BYTES_PER_S on average over
  STALL_WINDOW_S seconds) is stopped instead of running for days; a server that sends
  nothing at all times out after TIMEOUT_S.
- Before a file gets its final name its content is checked: not an HTML page (the
  error or login page that a proxy serves with status 200), JSON where JSON is
  expected, UTF-8 text for merges.txt, a well-formed safetensors header for the
  weights; and for the files in `KNOWN_FILES` the exact size and SHA-256. A bad file
  is then an error now, not a model that fails later with a baffling message, or
  loads and quietly produces nonsense.
- Every failure ends as one line (a `UserError`) and removes the partial file and
  its `.part.json`, with one exception: a transfer that was interrupted (connection
  dropped, stall, server busy, Ctrl-C) while the partial file has a strong ETag is
  kept, since it can be resumed safely next time.

Only the standard library's urllib is used for the network, so nothing else has to be
installed.
"""

import hashlib
import http.client
import json
import os
import re
import struct
import time
import urllib.error
import urllib.parse
import urllib.request

from tqdm import tqdm

from gpt2.errors import UserError
from gpt2.files import BOUNDED, read_json, write_json

# (repo, file) -> (size in bytes, sha256) of files whose content we know in advance.
KNOWN_FILES = {
    ("openai-community/gpt2", "model.safetensors"):
        (548105171, "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"),
}

TIMEOUT_S = 30         # for connecting and for each read; a silent server is an error, not a hang
CHUNK = 1 << 20        # read and write at most 1 MiB at a time
STALL_WINDOW_S = 60    # a transfer must bring at least MIN_BYTES_PER_S * STALL_WINDOW_S bytes
MIN_BYTES_PER_S = 1024  # in every STALL_WINDOW_S seconds, or it is stopped as stalled

# Size caps of the small files (GPT-2's are 665 B, 1.04 MB and 456 KB): a few times
# the real size leaves room for a larger vocabulary, and none for a runaway stream.
SIZE_CAPS = {"config.json": 1 << 20, "vocab.json": 8 << 20, "merges.txt": 8 << 20}
HEADER_SLACK = 1 << 20          # room for the JSON header in model.safetensors' cap
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library refuses larger headers too

# A strong ETag is a quoted string of visible characters (RFC 9110 section 8.8.3);
# a weak one starts with W/ and does not match.
_STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')


def url_problem(url: str) -> str | None:
    """Why `url` is not something we can fetch with http(s), or None if it is fine."""
    if re.search(r"[\s\x00-\x1f\x7f]", url):
        return "not an http(s) URL (it contains spaces or control characters)"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as e:  # e.g. "Invalid IPv6 URL" for http://[::1
        return f"not an http(s) URL ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL"
    return None


# --- one file ---------------------------------------------------------------------

class _Interrupted(Exception):
    """A transfer that stopped half way (network down, dropped, stalled, server busy):
    the bytes received are fine, and can be resumed if the ETag allows it."""


def download(repo: str, filename: str, local_dir: str, base: str, by_hand: str) -> None:
    """Fetch one file into local_dir/filename, resuming a .part left by an earlier try.

    by_hand: what the user can do instead, for the message of a download that failed."""
    url = f"{base}/{repo}/resolve/main/{filename}"
    path = os.path.join(local_dir, filename)
    part, sidecar = path + ".part", path + ".part.json"
    try:
        _fetch(url, part, sidecar, _size_cap(repo, filename, local_dir), repo, filename)
        _check_known(repo, filename, part, path)
        _check_content(filename, part, url)
        os.replace(part, path)
    except _Interrupted as e:
        raise UserError(_after_interruption(str(e), url, part, sidecar, by_hand)) from None
    except KeyboardInterrupt:  # Ctrl-C is an interruption too
        if not _resumable(url, part, sidecar):
            _remove(part, sidecar)
        raise
    except OSError as e:  # network errors are _Interrupted by now: this is the local disk
        _remove(part, sidecar)
        raise UserError(f"{e.filename or path}: {e.strerror or e}") from None
    except BaseException:  # a UserError (bad answer, bad content) or a bug: nothing kept
        _remove(part, sidecar)
        raise
    _remove(sidecar)


def _after_interruption(reason: str, url: str, part: str, sidecar: str, by_hand: str) -> str:
    """The message for an interrupted download; removes a .part that cannot be resumed."""
    message = f"could not download {url} ({reason})"
    if _resumable(url, part, sidecar):
        return f"{message}; run again to resume. {by_hand}"
    had_bytes = os.path.exists(part) and os.path.getsize(part) > 0
    _remove(part, sidecar)
    if had_bytes:
        return (f"{message}; the partial file was removed, as the server sent no strong "
                f"ETag to resume it safely: run again to start over. {by_hand}")
    return f"{message}. {by_hand}"


def _remove(*paths: str) -> None:
    for p in paths:
        try:
            os.remove(p)
        except OSError:  # best effort: already gone, or we cannot; the real error matters more
            pass


def _one_line(text) -> str:
    """Server-made text (reasons, headers, exception messages) squeezed onto one line."""
    return " ".join(str(text).split())


# --- resuming: the .part and its .part.json ---------------------------------------

def _is_strong(etag) -> bool:
    return isinstance(etag, str) and _STRONG_ETAG.fullmatch(etag) is not None


def _stored_etag(url: str, sidecar: str) -> str | None:
    """The strong ETag recorded for url's .part, or None if there is no usable one."""
    try:
        meta = read_json(sidecar, None)
    except UserError:  # unreadable or mangled
        return None
    if isinstance(meta, dict) and meta.get("url") == url and _is_strong(meta.get("etag")):
        return meta["etag"]
    return None


def _resumable(url: str, part: str, sidecar: str) -> bool:
    """Does part hold bytes that a later try can resume with If-Range?"""
    return (os.path.exists(part) and os.path.getsize(part) > 0
            and _stored_etag(url, sidecar) is not None)


def _resume_point(url: str, part: str, sidecar: str) -> tuple[int, str | None]:
    """(bytes of part to keep, the ETag to resume them with); (0, None) to start over."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    etag = _stored_etag(url, sidecar) if have else None
    if etag is None:  # nothing proves these bytes belong to the file on the server now
        _remove(part, sidecar)
        return 0, None
    return have, etag


def _start_over(url: str, part: str, sidecar: str, etag: str | None, total: int | None) -> None:
    """Empty part for a whole new body, and record the ETag it can be resumed with."""
    # Order matters: the .part.json must never vouch for bytes of another version, so
    # forget the old ETag, empty the file, and only then record the new ETag.
    _remove(sidecar)
    try:
        open(part, "wb").close()
        if _is_strong(etag):  # (the size is for a person looking; the ETag decides)
            write_json(sidecar, {"url": url, "etag": etag, "size": total})
    except OSError as e:
        raise UserError(f"cannot write {e.filename or part} ({e.strerror or e})") from None


# --- the transfer -----------------------------------------------------------------

class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect following, but only to http(s) URLs (urllib also follows ftp:)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        problem = url_problem(newurl)
        if problem:
            fp.close()
            raise UserError(f"{req.full_url}: redirected to {newurl!r}, {problem}")
        # The new request keeps our headers, Range and If-Range included.
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, part: str, sidecar: str, cap: int, repo: str, filename: str) -> None:
    """Download url into part, resuming it when that is safe; return when part is whole."""
    have, etag = _resume_point(url, part, sidecar)
    request = urllib.request.Request(url, headers={"User-Agent": "gpt2-teaching"})
    if have:
        request.add_header("Range", f"bytes={have}-")  # "send me byte `have` onwards,
        request.add_header("If-Range", etag)           #  if it is still this version"
    response = _open(request, url, have, repo, filename)
    if response is None:  # 416: the .part already holds the whole file
        return
    with response:
        start, total = _body_range(response, url, have, etag, cap, filename)
        if start == 0:  # a whole body: a first try, a changed file, or a server without Range
            _start_over(url, part, sidecar, response.headers.get("ETag"), total)
        _receive(response, url, part, start, total, cap, filename)


def _open(request: urllib.request.Request, url: str, have: int, repo: str, filename: str):
    """Send the request: the response, or None when a 416 says the .part is whole."""
    try:
        # (urllib follows the hub's redirect to its file CDN by itself.)
        return urllib.request.build_opener(_CheckedRedirects).open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()  # an HTTPError is also the open response; close its connection
        if e.code == 416 and have:  # Range Not Satisfiable: did we ask past the end?
            content_range = e.headers.get("Content-Range", "")
            if content_range == f"bytes */{have}":  # the file is exactly what we have
                return None
            raise UserError(f"{url}: refused bytes={have}- (416, Content-Range "
                            f"'{_one_line(content_range)}'); the partial file was removed, "
                            f"run again to start over") from None
        raise _http_error(e, url, repo, filename) from None
    except (OSError, http.client.HTTPException) as e:
        # URLError (no DNS, refused, TLS failure), timeouts and resets are all OSErrors;
        # http.client raises HTTPException for answers that are not proper HTTP.
        raise _Interrupted(_reason(e)) from None
    except ValueError as e:  # urllib could not parse a redirect's Location
        raise UserError(f"{url}: bad redirect ({_one_line(e)})") from None


def _http_error(e: urllib.error.HTTPError, url: str, repo: str, filename: str) -> Exception:
    """The exception to raise for an HTTP error status."""
    code, reason = e.code, _one_line(e.reason)
    if 300 <= code < 400:  # urllib gives up on a redirect loop with a many-line message
        if "infinite loop" in str(e.reason):
            return UserError(f"{url}: too many redirects")
        return UserError(f"{url}: a redirect that could not be followed ({code} {reason})")
    if code == 404:
        return UserError(f"{url}: not found (404) — is '{repo}' a model repo "
                         f"on the hub with a {filename}?")
    if code in (401, 403):  # what the hub answers for a private, gated or missing repo
        return UserError(f"{url}: access denied ({code}) — '{repo}' may not exist, "
                         f"or be private or gated")
    if code >= 500 or code == 429:  # busy or broken for now: a later try may work
        return _Interrupted(f"the server answered {code} {reason}")
    return UserError(f"{url}: the server answered {code} {reason}")


def _body_range(response, url: str, have: int, etag, cap: int, filename: str):
    """Check the answer's headers: (the byte the body starts at, the full size or None)."""
    if response.headers.get_content_type() == "text/html":
        raise UserError(f"{url}: the server sent an HTML page (Content-Type text/html), "
                        f"not {filename}; nothing was kept")
    if response.status == 206:  # Partial Content: the rest of the version we asked for
        content_range = response.headers.get("Content-Range", "")
        m = re.fullmatch(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)", content_range)
        if not (m and int(m[1]) == have and int(m[2]) == int(m[3]) - 1):
            raise UserError(f"{url}: asked for bytes {have}- but got Content-Range "
                            f"'{_one_line(content_range)}'; the partial file was removed")
        if response.headers.get("ETag", etag) != etag:
            raise UserError(f"{url}: the rest of the file came with another ETag; "
                            f"the partial file was removed")
        start, total = have, int(m[3])
    else:  # 200: the whole file (it changed since the .part, or Range is not supported)
        start, total = 0, None
        length = response.headers.get("Content-Length")
        if length is not None:
            if not re.fullmatch(r"[0-9]+", length.strip()):
                raise UserError(f"{url}: bad Content-Length '{_one_line(length)}'")
            total = int(length)
    if total is not None and total > cap:  # refused before reading a byte of it
        raise UserError(f"{url}: the server announces {total} bytes, more than the "
                        f"{cap} that {filename} can have; nothing was kept")
    return start, total


def _receive(response, url: str, part: str, start: int, total, cap: int, filename: str):
    """Append the body to part, stopping at the size cap or when the transfer stalls."""
    most = total if total is not None else cap
    got = start
    window_start, window_got = time.monotonic(), got  # for the stall check
    try:
        # disable=None: no bar when stderr is not a terminal (a log file, CI, a test).
        with open(part, "ab") as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                         desc=filename, disable=None) as bar:
            while chunk := _read_some(response):
                got += len(chunk)
                if got > most:  # a stream without end (or longer than it said)
                    raise UserError(f"{url}: the body goes past {most} bytes, more than "
                                    f"{filename} can have; the download was removed")
                f.write(chunk)
                bar.update(len(chunk))
                # Every STALL_WINDOW_S seconds: did the last window bring enough bytes?
                if time.monotonic() - window_start >= STALL_WINDOW_S:
                    if got - window_got < MIN_BYTES_PER_S * STALL_WINDOW_S:
                        raise _Interrupted(
                            f"stalled: {got - window_got} bytes in {STALL_WINDOW_S} s, less "
                            f"than {MIN_BYTES_PER_S} bytes/s, after {got} of {total or '?'} bytes")
                    window_start, window_got = time.monotonic(), got
    except OSError as e:  # reading errors are _Interrupted already: this is the disk
        raise UserError(f"cannot write {part} ({e.strerror or e})") from None
    # A dropped connection does not raise: the body just ends early. So compare what
    # we have with what the server said it would send.
    if total is not None and got < total:
        raise _Interrupted(f"the connection closed after {got} of {total} bytes")


def _read_some(response) -> bytes:
    """The next piece of the body, up to CHUNK bytes; b"" at its end."""
    try:
        # read1, not read: read(CHUNK) waits for a whole MiB, so with a server that
        # trickles a byte a second the stall check would never get to run.
        return response.read1(CHUNK)
    except (OSError, http.client.HTTPException) as e:  # reset, timeout, broken chunking
        raise _Interrupted(_reason(e)) from None


def _reason(e: Exception) -> str:
    """One line saying what went wrong on the network, like 'TimeoutError: timed out'."""
    cause = getattr(e, "reason", None) or e  # a URLError carries the real error in .reason
    text = _one_line(cause)
    name = type(cause).__name__
    if isinstance(cause, BaseException) and not text.startswith(name):
        text = f"{name}: {text}"
    return text


# --- the checks -------------------------------------------------------------------

def _size_cap(repo: str, filename: str, local_dir: str) -> int:
    """The most bytes `filename` may have."""
    if (repo, filename) in KNOWN_FILES:
        return KNOWN_FILES[repo, filename][0]
    if filename == "model.safetensors":
        return _weights_cap(os.path.join(local_dir, "config.json"))
    return SIZE_CAPS[filename]


def _weights_cap(config_path: str) -> int:
    """The most bytes the model.safetensors of the model in config_path can need."""
    try:
        cfg = read_json(config_path, kind=dict)  # bounded size, depth and numbers (files.py)
    except UserError as e:
        raise UserError(f"cannot read it to size model.safetensors: {e}") from None
    cfg = cfg if isinstance(cfg, dict) else {}
    # The defaults are GPT2Config's (config.py); old configs call n_positions n_ctx.
    V = cfg.get("vocab_size", 50257)
    P = cfg.get("n_positions", cfg.get("n_ctx", 1024))
    C, L = cfg.get("n_embd"), cfg.get("n_layer")
    if not all(type(x) is int and x > 0 for x in (V, P, C, L)):
        raise UserError(f"{config_path}: not a GPT-2 config (vocab_size, n_positions, "
                        f"n_embd, n_layer must be positive integers)")
    # Token and position embeddings, then per block: attention qkv (3CC + 3C) and
    # projection (CC + C), MLP (4CC + 4C and 4CC + C), two LayerNorms (4C); the final
    # LayerNorm. 8 bytes a parameter is float64, or float32 with room to spare.
    params = V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C
    return params * 8 + HEADER_SLACK


def _check_known(repo: str, filename: str, part: str, path: str) -> None:
    """Compare a finished download with KNOWN_FILES."""
    if (repo, filename) not in KNOWN_FILES:
        return
    want_size, want_sha = KNOWN_FILES[repo, filename]
    got_size = os.path.getsize(part)
    if got_size != want_size:
        raise UserError(f"{path}: {got_size} bytes, but {want_size} were expected; "
                        f"the download was removed")
    h = hashlib.sha256()
    with open(part, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    if h.hexdigest() != want_sha:
        raise UserError(f"{path}: sha256 {h.hexdigest()} does not match the expected "
                        f"{want_sha}; the download was removed")


def _check_content(filename: str, part: str, url: str) -> None:
    """Is the finished download the kind of file its name says? Else a UserError."""
    with open(part, "rb") as f:
        start = f.read(1024).lstrip().lower()
    # A proxy's login page or a mirror's error page, sent with status 200.
    if start.startswith((b"<!doctype", b"<html")):
        raise UserError(f"{url}: the server sent an HTML page, not {filename}; "
                        f"nothing was kept")
    try:
        if filename in ("config.json", "vocab.json"):
            with open(part, "rb") as f:
                if not isinstance(json.loads(f.read(), **BOUNDED), dict):  # numbers bounded (files.py)
                    raise ValueError("not a JSON object")
        elif filename == "merges.txt":
            with open(part, "rb") as f:
                f.read().decode("utf-8")
        elif filename == "model.safetensors":
            _check_safetensors_header(part)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError too
        raise UserError(f"{url}: not a valid {filename} ({_one_line(e)}); "
                        f"the download was removed") from None


def _check_safetensors_header(part: str) -> None:
    """safetensors starts with an 8-byte little-endian length N, then N bytes of JSON
    object (the tensors' names, shapes and offsets). Check that; leave the tensors."""
    size = os.path.getsize(part)
    with open(part, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, too short for a header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > MAX_SAFETENSORS_HEADER:
            raise ValueError(f"a header of {n} bytes does not fit in {size} bytes")
        header = json.loads(f.read(n).decode("utf-8"), **BOUNDED)
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
