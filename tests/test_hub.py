"""Tests for gpt2.hub against a small local HTTP server that plays the hub.

No real network: the server runs on 127.0.0.1 in a thread, serves fake repos from a
dict, honours Range headers like the hub's CDN, and can be told to drop a response
halfway to simulate an interrupted download.
"""

import hashlib
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gpt2 import hub
from gpt2.errors import UserError

WEIGHTS = bytes(range(256)) * 1000  # 256 kB of fake model.safetensors


def fake_repo(repo: str) -> dict:
    return {
        f"/{repo}/resolve/main/config.json": b'{"n_layer": 2, "n_head": 2, "n_embd": 8}\n',
        f"/{repo}/resolve/main/model.safetensors": WEIGHTS,
        f"/{repo}/resolve/main/vocab.json": b'{"a": 0}\n',
        f"/{repo}/resolve/main/merges.txt": b"#version: 0.2\n",
    }


class FakeHub:
    def __init__(self):
        self.files = {}        # URL path -> bytes
        self.requests = []     # (path, Range header or None), in order
        self.cut = set()       # paths whose next response is dropped halfway
        self.ignore_range = False
        self.redirects = {}    # path -> path, answered with 302 (the hub sends weights to a CDN)
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                hub_.requests.append((self.path, rng))
                if self.path in hub_.redirects:
                    self.send_response(302)
                    self.send_header("Location", hub_.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = hub_.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
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
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                if self.path in hub_.cut:  # promise everything, send half, hang up
                    hub_.cut.discard(self.path)
                    self.wfile.write(rest[: len(rest) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(rest)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

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
    assert "\n" not in msg
    return msg


def assert_tiny_repo(local: str, repo: str = "org/tiny"):
    for name in hub.FILES:
        with open(os.path.join(local, name), "rb") as f:
            assert f.read() == fake_repo(repo)[f"/{repo}/resolve/main/{name}"]
    assert not [n for n in os.listdir(local) if n.endswith(".part")]


def test_full_download_then_no_requests(fake_hub, tmp_path):
    fake_hub.files.update(fake_repo("org/tiny"))
    local = hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert local == os.path.join(str(tmp_path), "org", "tiny")
    assert_tiny_repo(local)
    assert len(fake_hub.requests) == 4
    fake_hub.requests.clear()
    assert hub.resolve("org/tiny", weights_dir=str(tmp_path)) == local
    assert fake_hub.requests == []


def test_interrupted_download_resumes(fake_hub, tmp_path):
    fake_hub.files.update(fake_repo("org/tiny"))
    path = "/org/tiny/resolve/main/model.safetensors"
    fake_hub.cut.add(path)
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert fake_hub.url + path in one_line(e)
    part = tmp_path / "org" / "tiny" / "model.safetensors.part"
    partial = part.read_bytes()
    assert 0 < len(partial) < len(WEIGHTS) and WEIGHTS.startswith(partial)
    assert not (tmp_path / "org" / "tiny" / "model.safetensors").exists()

    fake_hub.requests.clear()
    local = hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert (path, f"bytes={len(partial)}-") in fake_hub.requests
    assert ("/org/tiny/resolve/main/config.json", None) not in fake_hub.requests  # kept
    assert_tiny_repo(local)


def test_redirect_keeps_the_range(fake_hub, tmp_path):
    fake_hub.files.update(fake_repo("org/tiny"))
    cdn = "/cdn/abc123"
    fake_hub.files[cdn] = fake_hub.files.pop("/org/tiny/resolve/main/model.safetensors")
    fake_hub.redirects["/org/tiny/resolve/main/model.safetensors"] = cdn
    fake_hub.cut.add(cdn)
    with pytest.raises(UserError):
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    partial = (tmp_path / "org" / "tiny" / "model.safetensors.part").stat().st_size
    local = hub.resolve("org/tiny", weights_dir=str(tmp_path))
    assert (cdn, f"bytes={partial}-") in fake_hub.requests
    assert_tiny_repo(local)


def test_complete_part_is_finished_by_416(fake_hub, tmp_path):
    fake_hub.files.update(fake_repo("org/tiny"))
    (tmp_path / "org" / "tiny").mkdir(parents=True)
    (tmp_path / "org" / "tiny" / "model.safetensors.part").write_bytes(WEIGHTS)
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))


def test_server_ignoring_range_starts_over(fake_hub, tmp_path):
    fake_hub.files.update(fake_repo("org/tiny"))
    fake_hub.ignore_range = True
    (tmp_path / "org" / "tiny").mkdir(parents=True)
    (tmp_path / "org" / "tiny" / "model.safetensors.part").write_bytes(b"junk")
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))


@pytest.mark.parametrize("wrong", ["sha", "size"])
def test_checksum_mismatch_removes_the_file(fake_hub, tmp_path, monkeypatch, wrong):
    fake_hub.files.update(fake_repo("org/tiny"))
    size, sha = len(WEIGHTS), hashlib.sha256(WEIGHTS).hexdigest()
    bad = (size, "0" * 64) if wrong == "sha" else (size + 1, sha)
    known = {("org/tiny", "model.safetensors"): bad}
    monkeypatch.setattr(hub, "KNOWN_FILES", known)
    with pytest.raises(UserError) as e:
        hub.resolve("org/tiny", weights_dir=str(tmp_path))
    msg = one_line(e)
    assert ("sha256" in msg) if wrong == "sha" else ("bytes" in msg)
    assert "removed" in msg
    assert not (tmp_path / "org" / "tiny" / "model.safetensors").exists()
    assert not (tmp_path / "org" / "tiny" / "model.safetensors.part").exists()


def test_matching_checksum_passes(fake_hub, tmp_path, monkeypatch):
    fake_hub.files.update(fake_repo("org/tiny"))
    known = {("org/tiny", "model.safetensors"): (len(WEIGHTS), hashlib.sha256(WEIGHTS).hexdigest())}
    monkeypatch.setattr(hub, "KNOWN_FILES", known)
    assert_tiny_repo(hub.resolve("org/tiny", weights_dir=str(tmp_path)))


def test_404(fake_hub, tmp_path):
    with pytest.raises(UserError) as e:
        hub.resolve("org/missing", weights_dir=str(tmp_path))
    msg = one_line(e)
    assert "404" in msg and f"{fake_hub.url}/org/missing/resolve/main/config.json" in msg


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


def test_alias(fake_hub, tmp_path, monkeypatch):
    fake_hub.files.update(fake_repo("openai-community/gpt2"))
    monkeypatch.setattr(hub, "KNOWN_FILES", {})  # the fake weights are not the real 548 MB
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
