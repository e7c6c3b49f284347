"""Tests for harness.hub against a small local HTTP server that plays the hub.

No real network: the server runs on 127.0.0.1 in a thread, serves fake repos from a
dict, sends an ETag with each file and honours Range and If-Range headers like the
hub's CDN. It can also be told to misbehave: drop a response halfway, ignore Range,
trickle, stream without end, lie about sizes, serve an HTML page, send an answer
that is not HTTP at all.
"""

import errno
import hashlib
import json
import os
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import download, hub
from gpt2.errors import UserError


def safetensors_bytes(payload: bytes) -> bytes:
    """A file in the safetensors layout: 8-byte header length, JSON header, the data."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(payload)],
                               "data_offsets": [0, len(payload)]}}).encode()
    return struct.pack("<Q", len(header)) + header + payload


WEIGHTS = safetensors_bytes(bytes(range(256)) * 1000)  # 256 kB of fake model.safetensors
HTML = b"<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n"


def fake_repo(repo: str) -> dict:
    return {
        f"/{repo}/resolve/main/config.json": b'{"n_layer": 2, "n_head": 2, "n_embd": 8}\n',
        f"/{repo}/resolve/main/model.safetensors": WEIGHTS,
        f"/{repo}/resolve/main/vocab.json": b'{"a": 0}\n',
        f"/{repo}/resolve/main/merges.txt": b"#version: 0.2\n",
    }


CONFIG = "/org/tiny/resolve/main/config.json"
MODEL = "/org/tiny/resolve/main/model.safetensors"


class FakeHub:
    def __init__(self):
        self.files = {}          # URL path -> bytes
        self.requests = []       # (path, Range header or None), in order
        self.if_ranges = []      # the If-Range header of each request (or None), in order
        self.cut = set()         # paths whose next response is dropped halfway
        self.trickle = set()     # paths whose next response sends one byte every 0.2 s
        self.endless = set()     # paths answered with a body that never ends, no Content-Length
        self.ignore_range = False
        self.etags = "strong"    # the ETag sent with each file: "strong", "weak" or None
        self.redirects = {}      # path -> path or URL, answered with 302 (the hub -> its CDN)
        self.status = {}         # path -> an error status to answer with
        self.content_types = {}  # path -> Content-Type (else application/octet-stream)
        self.lengths = {}        # path -> a Content-Length to announce instead of the true one
        self.raw = {}            # path -> bytes sent as the whole answer, status line and all
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                hub_.requests.append((self.path, rng))
                hub_.if_ranges.append(if_range)
                if self.path in hub_.raw:
                    self.wfile.write(hub_.raw[self.path])
                    self.close_connection = True
                    return
                if self.path in hub_.redirects:
                    self.send_response(302)
                    self.send_header("Location", hub_.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path in hub_.status:
                    self.send_error(hub_.status[self.path])
                    return
                if self.path in hub_.endless:
                    return self.send_endless()
                body = hub_.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                etag = hub_.etag_of(body)
                # If-Range: the Range counts only if the file is still the version the
                # client names; a weak ETag never matches. Else the whole file is sent.
                if if_range is not None and (not etag or etag.startswith("W/") or if_range != etag):
                    rng = None
                start = 0
                if rng and not hub_.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[start:]
                content_type = hub_.content_types.get(self.path, "application/octet-stream")
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", hub_.lengths.get(self.path, str(len(rest))))
                if etag:
                    self.send_header("ETag", etag)
                self.end_headers()
                if self.path in hub_.cut:  # promise everything, send half, hang up
                    hub_.cut.discard(self.path)
                    self.wfile.write(rest[: len(rest) // 2])
                    self.close_connection = True
                    return
                if self.path in hub_.trickle:
                    hub_.trickle.discard(self.path)
                    return self.send_slowly(rest)
                self.wfile.write(rest)

            def send_endless(self):
                self.send_response(200)
                self.end_headers()  # no Content-Length: the body lasts until the connection closes
                self.keep_sending(lambda: b"\0" * 65536, pause=0)

            def send_slowly(self, rest):
                it = iter(rest)
                self.keep_sending(lambda: bytes([next(it)]), pause=0.2)

            def keep_sending(self, piece, pause):
                """Send piece() after piece() until the client hangs up (or 20 s pass)."""
                deadline = time.monotonic() + 20
                try:
                    while time.monotonic() < deadline:
                        self.wfile.write(piece())
                        time.sleep(pause)
                except (BrokenPipeError, ConnectionResetError, StopIteration):
                    pass
                self.close_connection = True

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def etag_of(self, body: bytes) -> str | None:
        """A different ETag for every content, as a real server does."""
        tag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        return {"strong": tag, "weak": f"W/{tag}", None: None}[self.etags]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url + "/")  # the trailing / is dropped
    yield server
    server.close()


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "\r" not in msg
    return msg


def leftovers(root) -> list[str]:
    """Partial files, sidecars and temporary files anywhere under root: there must be none."""
    return [str(p) for p in root.rglob("*")
            if p.is_file() and (".part" in p.name or ".tmp-" in p.name)]


def assert_tiny_repo(local: str, repo: str = "org/tiny"):
    for name in hub.FILES:
        with open(os.path.join(local, name), "rb") as f:
            assert f.read() == fake_repo(repo)[f"/{repo}/resolve/main/{name}"]
    assert not [n for n in os.listdir(local) if ".part" in n or ".tmp-" in n]


def assert_failed_cleanly(tmp_path, filename: str):
    """No file of that name, and nothing half-done left anywhere."""
    assert not (tmp_path / "org" / "tiny" / filename).exists()
    assert leftovers(tmp_path) == []
    if filename == "config.json":  # the first file: not even the folders stay
        assert list(tmp_path.iterdir()) == []


def test_full_download_then_no_requests(fake_hub, tmp_path):
    fake_hub.files.update(fake_repo("org/tiny"))
    local = hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert local == os.path.join(str(tmp_path), "org", "tiny")
    assert_tiny_repo(local)
    assert len(fake_hub.requests) == 4
    fake_hub.requests.clear()
    assert hub.resolve("org/tiny", weights_dir=str(tmp_path)) == local
    assert fake_hub.requests == []


# --- resuming, and only when the file did not change ------------------------------

def test_interrupted_download_resumes(fake_hub, tmp_path):
    fake_hub.files.update(fake_repo("org/tiny"))
    fake_hub.cut.add(MODEL)
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert fake_hub.url + MODEL in one_line(e) and "run again to resume" in one_line(e)
    part = tmp_path / "org" / "tiny" / "model.safetensors.part"
    partial = part.read_bytes()
    assert 0 < len(partial) < len(WEIGHTS) and WEIGHTS.startswith(partial)
    assert not (tmp_path / "org" / "tiny" / "model.safetensors").exists()
    assert (tmp_path / "org" / "tiny" / "model.safetensors.part.json").exists()

    fake_hub.requests.clear()
    fake_hub.if_ranges.clear()
    local = hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert (MODEL, f"bytes={len(partial)}-") in fake_hub.requests
    assert fake_hub.if_ranges[0] == fake_hub.etag_of(WEIGHTS)  # "...if it is still this version"
    assert (CONFIG, None) not in fake_hub.requests  # kept
    assert_tiny_repo(local)


def test_changed_file_is_fetched_again_whole(fake_hub, tmp_path):
    """v1 interrupted halfway, v2 on the server: the result is exactly v2, not a mix."""
    fake_hub.files.update(fake_repo("org/tiny"))
    fake_hub.cut.add(MODEL)
    with pytest.raises(UserError):
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    partial = (tmp_path / "org" / "tiny" / "model.safetensors.part").stat().st_size
    v2 = safetensors_bytes(bytes(reversed(range(256))) * 900)
    fake_hub.files[MODEL] = v2  # a new version, so a new ETag
    fake_hub.requests.clear()
    fake_hub.if_ranges.clear()
    local = hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert fake_hub.requests == [(MODEL, f"bytes={partial}-"),  # answered 200: the whole v2
                                 ("/org/tiny/resolve/main/vocab.json", None),
                                 ("/org/tiny/resolve/main/merges.txt", None)]
    assert fake_hub.if_ranges[0] == fake_hub.etag_of(WEIGHTS)  # the old version's: no match
    with open(os.path.join(local, "model.safetensors"), "rb") as f:
        assert f.read() == v2
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("etags", ["weak", None])
def test_without_a_strong_etag_nothing_is_resumed(fake_hub, tmp_path, etags):
    fake_hub.files.update(fake_repo("org/tiny"))
    fake_hub.etags = etags
    fake_hub.cut.add(MODEL)
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert "removed" in one_line(e) and "start over" in one_line(e)
    assert leftovers(tmp_path) == []
    fake_hub.requests.clear()
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))
    assert (MODEL, None) in fake_hub.requests  # from byte 0


def test_redirect_keeps_the_range(fake_hub, tmp_path):
    fake_hub.files.update(fake_repo("org/tiny"))
    cdn = "/cdn/abc123"
    fake_hub.files[cdn] = fake_hub.files.pop(MODEL)
    fake_hub.redirects[MODEL] = cdn
    fake_hub.cut.add(cdn)
    with pytest.raises(UserError):
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    partial = (tmp_path / "org" / "tiny" / "model.safetensors.part").stat().st_size
    fake_hub.if_ranges.clear()
    local = hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert (cdn, f"bytes={partial}-") in fake_hub.requests
    assert fake_hub.if_ranges[:2] == [fake_hub.etag_of(WEIGHTS)] * 2  # hub, then CDN
    assert_tiny_repo(local)


def test_complete_part_is_finished_by_416(fake_hub, tmp_path):
    """The whole file arrived, but the rename did not happen (the process was killed)."""
    fake_hub.files.update(fake_repo("org/tiny"))
    fake_hub.cut.add(MODEL)
    with pytest.raises(UserError):
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    (tmp_path / "org" / "tiny" / "model.safetensors.part").write_bytes(WEIGHTS)
    fake_hub.requests.clear()
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))
    assert fake_hub.requests[0] == (MODEL, f"bytes={len(WEIGHTS)}-")  # answered 416


def test_server_ignoring_range_starts_over(fake_hub, tmp_path):
    fake_hub.files.update(fake_repo("org/tiny"))
    fake_hub.cut.add(MODEL)
    with pytest.raises(UserError):
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    fake_hub.ignore_range = True  # answers 200 with the whole file
    fake_hub.requests.clear()
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))
    assert fake_hub.requests[0][0] == MODEL and fake_hub.requests[0][1] is not None


def test_part_without_a_validator_is_not_resumed(fake_hub, tmp_path):
    """A .part with no .part.json (an older version of this code, or put there by hand)."""
    fake_hub.files.update(fake_repo("org/tiny"))
    (tmp_path / "org" / "tiny").mkdir(parents=True)
    (tmp_path / "org" / "tiny" / "model.safetensors.part").write_bytes(b"junk")
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))
    assert (MODEL, None) in fake_hub.requests


def test_server_error_keeps_a_resumable_part(fake_hub, tmp_path):
    """A 503 is the server being busy, not the partial file being wrong."""
    fake_hub.files.update(fake_repo("org/tiny"))
    fake_hub.cut.add(MODEL)
    with pytest.raises(UserError):
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    fake_hub.status[MODEL] = 503
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert "503" in one_line(e) and "run again to resume" in one_line(e)
    assert (tmp_path / "org" / "tiny" / "model.safetensors.part").exists()
    del fake_hub.status[MODEL]
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))


def test_ctrl_c_keeps_a_resumable_part(fake_hub, tmp_path, monkeypatch):
    fake_hub.files.update(fake_repo("org/tiny"))

    def interrupt(*args):
        raise KeyboardInterrupt

    check_content = download._check_content
    monkeypatch.setattr(download, "_check_content", interrupt)  # Ctrl-C just before the rename
    with pytest.raises(KeyboardInterrupt):
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert (tmp_path / "org" / "tiny" / "config.json.part").exists()
    monkeypatch.setattr(download, "_check_content", check_content)
    fake_hub.requests.clear()
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))
    assert fake_hub.requests[0] == (CONFIG, f"bytes={len(fake_repo('org/tiny')[CONFIG])}-")


# --- known files -----------------------------------------------------------------

@pytest.mark.parametrize("wrong", ["sha", "size"])
def test_checksum_mismatch_removes_the_file(fake_hub, tmp_path, monkeypatch, wrong):
    fake_hub.files.update(fake_repo("org/tiny"))
    size, sha = len(WEIGHTS), hashlib.sha256(WEIGHTS).hexdigest()
    bad = (size, "0" * 64) if wrong == "sha" else (size + 1, sha)
    known = {("org/tiny", "model.safetensors"): bad}
    monkeypatch.setattr(download, "KNOWN_FILES", known)
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    msg = one_line(e)
    assert ("sha256" in msg) if wrong == "sha" else ("bytes" in msg)
    assert "removed" in msg
    assert not (tmp_path / "org" / "tiny" / "model.safetensors").exists()
    assert not (tmp_path / "org" / "tiny" / "model.safetensors.part").exists()
    assert leftovers(tmp_path) == []


def test_matching_checksum_passes(fake_hub, tmp_path, monkeypatch):
    fake_hub.files.update(fake_repo("org/tiny"))
    known = {("org/tiny", "model.safetensors"): (len(WEIGHTS), hashlib.sha256(WEIGHTS).hexdigest())}
    monkeypatch.setattr(download, "KNOWN_FILES", known)
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))


# --- size caps and stalls --------------------------------------------------------

@pytest.mark.parametrize("filename", ["config.json", "model.safetensors"])
def test_endless_stream_is_cut_off(fake_hub, tmp_path, filename):
    fake_hub.files.update(fake_repo("org/tiny"))
    path = f"/org/tiny/resolve/main/{filename}"
    fake_hub.endless.add(path)
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert fake_hub.url + path in one_line(e) and "bytes" in one_line(e)
    assert_failed_cleanly(tmp_path, filename)


@pytest.mark.parametrize("filename", ["config.json", "model.safetensors"])
def test_announced_size_over_the_cap_is_refused(fake_hub, tmp_path, filename):
    fake_hub.files.update(fake_repo("org/tiny"))
    fake_hub.lengths[f"/org/tiny/resolve/main/{filename}"] = str(10**12)
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert f"announces {10**12} bytes" in one_line(e)  # refused before reading the body
    assert_failed_cleanly(tmp_path, filename)


def test_weights_cap_from_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12}')
    assert download._weights_cap(str(config)) == 124_439_808 * 8 + download.HEADER_SLACK  # GPT-2's 124M
    assert download._weights_cap(str(config)) > 548_105_171  # the real file fits
    config.write_text('{"n_embd": "768"}')
    with pytest.raises(UserError) as e:
        download._weights_cap(str(config))
    assert str(config) in one_line(e)


@pytest.mark.parametrize("etags", ["strong", None])
def test_trickle_is_stopped(fake_hub, tmp_path, monkeypatch, etags):
    fake_hub.files.update(fake_repo("org/tiny"))
    fake_hub.etags = etags
    fake_hub.trickle.add(MODEL)  # one byte every 0.2 s
    monkeypatch.setattr(download, "STALL_WINDOW_S", 0.5)
    monkeypatch.setattr(download, "MIN_BYTES_PER_S", 100)
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert time.monotonic() - t0 < 3
    assert "stalled" in one_line(e) and fake_hub.url + MODEL in one_line(e)
    part = tmp_path / "org" / "tiny" / "model.safetensors.part"
    assert part.exists() == (etags == "strong")  # kept only when it can be resumed safely
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))


# --- content checks --------------------------------------------------------------

@pytest.mark.parametrize("filename, content_type, body", [
    ("config.json", "text/html; charset=utf-8", HTML),
    ("config.json", "application/json", HTML),           # only the body gives it away
    ("model.safetensors", "text/html", HTML),
    ("model.safetensors", "application/octet-stream", HTML),
    ("merges.txt", "text/plain", b"  \n<HTML><body>Error</body></HTML>"),
])
def test_html_page_is_refused(fake_hub, tmp_path, filename, content_type, body):
    fake_hub.files.update(fake_repo("org/tiny"))
    path = f"/org/tiny/resolve/main/{filename}"
    fake_hub.files[path] = body
    fake_hub.content_types[path] = content_type
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert "HTML" in one_line(e) and fake_hub.url + path in one_line(e)
    # text/html is refused from the headers, before the body is read
    assert ("Content-Type text/html" in one_line(e)) == content_type.startswith("text/html")
    assert_failed_cleanly(tmp_path, filename)


@pytest.mark.parametrize("filename, body", [
    ("config.json", b"[1, 2]"),
    ("vocab.json", b'{"a": 0'),
    ("merges.txt", b"#version: 0.2\n\xff\xfe\n"),
    ("model.safetensors", b"abc"),
    ("model.safetensors", b"\xff" * 64),                  # a header "longer" than the file
    ("model.safetensors", struct.pack("<Q", 2) + b"[]"),  # a header that is not an object
])
def test_invalid_content_is_refused(fake_hub, tmp_path, filename, body):
    fake_hub.files.update(fake_repo("org/tiny"))
    path = f"/org/tiny/resolve/main/{filename}"
    fake_hub.files[path] = body
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert f"not a valid {filename}" in one_line(e)
    assert_failed_cleanly(tmp_path, filename)


# --- errors, each one line -------------------------------------------------------

def test_404(fake_hub, tmp_path):
    with pytest.raises(UserError) as e:
        hub.resolve("org/missing", weights_dir=str(tmp_path))
    msg = one_line(e)
    assert "404" in msg and f"{fake_hub.url}/org/missing/resolve/main/config.json" in msg
    assert list(tmp_path.iterdir()) == []  # no empty folders left behind


def test_no_network(monkeypatch, tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    msg = one_line(e)
    assert "by hand" in msg and str(tmp_path) in msg
    assert f"http://127.0.0.1:{port}/org/tiny/resolve/main/config.json" in msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target, says", [
    (CONFIG, "too many redirects"),               # a loop
    ("ftp://127.0.0.1:9/config.json", "not an http(s) URL"),
    ("http://[::1/config.json", "Invalid IPv6 URL"),
])
def test_bad_redirects(fake_hub, tmp_path, target, says):
    fake_hub.redirects[CONFIG] = target
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert says in one_line(e) and fake_hub.url + CONFIG in one_line(e)
    assert_failed_cleanly(tmp_path, "config.json")


LONG_HEADER = b"HTTP/1.0 200 OK\r\nX-Padding: " + b"a" * 70000 + b"\r\n\r\n"
BROKEN_CHUNKS = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"


@pytest.mark.parametrize("answer, says", [
    ({"raw": b"garbage\r\n\r\n"}, "BadStatusLine"),
    ({"raw": LONG_HEADER}, "LineTooLong"),
    ({"raw": BROKEN_CHUNKS}, "IncompleteRead"),
    ({"lengths": "12abc"}, "bad Content-Length '12abc'"),
    ({"status": 500}, "500"),
    ({"status": 418}, "418"),
])
def test_broken_answers_are_one_line(fake_hub, tmp_path, answer, says):
    fake_hub.files.update(fake_repo("org/tiny"))
    [(kind, value)] = answer.items()
    getattr(fake_hub, kind)[CONFIG] = value
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert says in one_line(e) and fake_hub.url + CONFIG in one_line(e)
    assert_failed_cleanly(tmp_path, "config.json")


def test_tls_error_is_one_line(monkeypatch, tmp_path):
    """https:// to a server that does not speak TLS: an ssl error, one line."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def answer_in_plain_text():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nthis is not TLS\r\n")

    thread = threading.Thread(target=answer_in_plain_text, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{port}")
    try:
        with pytest.raises(UserError) as e:
            hub.resolve("org/tiny", weights_dir=str(tmp_path))
    finally:
        thread.join(5)
        listener.close()
    assert "SSL" in one_line(e) and f"https://127.0.0.1:{port}/org/tiny" in one_line(e)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_disk_full(fake_hub, tmp_path, monkeypatch):
    fake_hub.files.update(fake_repo("org/tiny"))
    part = str(tmp_path / "org" / "tiny" / "model.safetensors.part")

    def full_disk_open(path, mode="r", *args, **kwargs):  # writes to the .part fail: ENOSPC
        if path == part and "r" not in mode:
            path = "/dev/full"
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(download, "open", full_disk_open, raising=False)
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert one_line(e) == f"cannot write {part} ({os.strerror(errno.ENOSPC)})"
    assert_failed_cleanly(tmp_path, "model.safetensors")


# --- HF_ENDPOINT -----------------------------------------------------------------

def test_endpoint_default_and_mirror(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub.endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "")
    assert hub.endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080/hf/")
    assert hub.endpoint() == "http://mirror.example:8080/hf"
    hub.check_endpoint()


@pytest.mark.parametrize("value", [
    "garbage", "ftp://x", "http://[::1", "https://", "http://host:99999", "http://host:port",
    "http://host/?q=1", "http://host/#top", "http://ho st", "http://host\n", "  ",
])
def test_bad_endpoint(monkeypatch, tmp_path, value):
    monkeypatch.setenv("HF_ENDPOINT", value)
    for check in (hub.endpoint, hub.check_endpoint):
        with pytest.raises(UserError) as e:
            check()
        assert one_line(e).startswith(f"HF_ENDPOINT {value!r}: ")
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path / "weights"))
    assert one_line(e).startswith(f"HF_ENDPOINT {value!r}: ")
    assert not (tmp_path / "weights").exists()  # refused before making any folder


def test_garbage_endpoint_message(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "garbage")
    with pytest.raises(UserError) as e:
        hub.check_endpoint()
    assert one_line(e) == "HF_ENDPOINT 'garbage': not an http(s) URL"


# --- names and local paths -------------------------------------------------------

def test_alias(fake_hub, tmp_path, monkeypatch):
    fake_hub.files.update(fake_repo("openai-community/gpt2"))
    monkeypatch.setattr(download, "KNOWN_FILES", {})  # the fake weights are not the real 548 MB
    # A folder named gpt2 in the working directory (like the package at the repo
    # root) must not be mistaken for the model.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2").mkdir()
    weights = tmp_path / "weights"
    local = hub.resolve("gpt2", weights_dir=str(weights))
    assert local == os.path.join(str(weights), "gpt2")
    assert [p for p, _ in fake_hub.requests] == [
        f"/openai-community/gpt2/resolve/main/{name}" for name in hub.FILES]
    assert_tiny_repo(local, "openai-community/gpt2")


def test_local_directory_and_bad_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # would fail if used
    assert hub.resolve(str(tmp_path)) == str(tmp_path)
    for bad in ["./nope/dir", "/no/such/dir", "~/no-such-dir-here"]:
        with pytest.raises(UserError) as e:
            hub.resolve(bad, weights_dir=str(tmp_path))
        assert one_line(e) == f"{bad}: no such directory"
    with pytest.raises(UserError) as e:
        hub.resolve("gpt3", weights_dir=str(tmp_path))
    assert "not a known model name" in one_line(e)


def test_a_file_is_not_a_hub_id(tmp_path, monkeypatch):
    """ckpt/model.safetensors has the form org/name: it must not be looked up on the hub."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # would fail if used
    monkeypatch.chdir(tmp_path)
    os.makedirs("ckpt")
    open(os.path.join("ckpt", "model.safetensors"), "wb").close()
    weights = tmp_path / "weights"
    for name in ("ckpt/model.safetensors", "./ckpt/model.safetensors"):
        with pytest.raises(UserError) as e:
            hub.resolve(name, weights_dir=str(weights))
        assert one_line(e) == f"{name}: is a file, not a model directory"
    assert not weights.exists()  # nothing was created for a download


def test_default_weights_dir(monkeypatch):
    monkeypatch.delenv("GPT2_WEIGHTS_DIR", raising=False)
    root = os.path.dirname(os.path.dirname(os.path.abspath(hub.__file__)))
    assert hub.default_weights_dir() == os.path.join(root, "weights")
    monkeypatch.setenv("GPT2_WEIGHTS_DIR", "/elsewhere")
    assert hub.default_weights_dir() == "/elsewhere"
