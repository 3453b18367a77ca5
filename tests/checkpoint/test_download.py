"""http(s) weights against real misbehaving HTTP servers on 127.0.0.1: URLs that would leave the download
cache are refused (nothing outside it is read, written or removed), host, port and query are part of the
cache key, a download has a deadline and a size cap, and an interrupted one leaves no temporary file."""
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from dinat_m2f.checkpoint import CheckpointFileError, SafeDetectionCheckpointer
from dinat_m2f.checkpoint.download import MAX_BYTES_ENV, TIMEOUT_ENV, cache_path
from project_paths import REPO


class Server(http.server.ThreadingHTTPServer):
    """Answers each path by the handler method ``routes[path without query]`` names; records every request
    line (path with query)."""

    daemon_threads = True

    def __init__(self, payload: bytes, routes: dict):
        self.payload, self.routes, self.requests = payload, routes, []
        self.stop = threading.Event()  # ends the endless and dripping bodies
        super().__init__(("127.0.0.1", 0), Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404, "File not found")
            return
        try:
            getattr(self, route)()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass
        self.close_connection = True

    def good(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.payload)))
        self.end_headers()
        self.wfile.write(self.server.payload)

    def by_query(self):
        """A different (valid) checkpoint per query, so a cache that ignored the query would be caught."""
        query = self.path.partition("?")[2]
        if "token=secret" not in query:
            self.send_error(403, "Forbidden")
            return
        body = self.server.payloads_by_query[query]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def endless(self):
        self.send_response(200)
        self.end_headers()
        block = b"\0" * 65536
        while not self.server.stop.is_set():
            self.wfile.write(block)

    def longer_than_announced(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.payload) // 2))
        self.end_headers()
        self.wfile.write(self.server.payload)

    def huge_announced(self):
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 40))
        self.end_headers()
        self.wfile.write(b"\0" * 1000)

    def drip_body(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        while not self.server.stop.wait(0.2):
            self.wfile.write(b"\0")
            self.wfile.flush()

    def drip_headers(self):
        self.wfile.write(b"HTTP/1.0 200 OK\r\n")
        while not self.server.stop.wait(0.2):
            self.wfile.write(b"X-Slow: 1\r\n")
            self.wfile.flush()

    def html(self):
        body = b"<!doctype html><html><body>Sign in to download</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def redirect_loop(self):
        self._redirect("/loop.pth")

    def redirect_to_ftp(self):
        self._redirect("ftp://127.0.0.1/weights.pth")

    def redirect_to_dot_dot(self):
        self._redirect("/../victim/notes.txt")

    def log_message(self, *args):
        pass


ROUTES = {
    "/weights/good.pth": "good",
    "/victim/notes.txt": "good",
    "/weights/by_query.pth": "by_query",
    "/weights/endless.pth": "endless",
    "/weights/huge.pth": "huge_announced",
    "/weights/short_length.pth": "longer_than_announced",
    "/weights/drip.pth": "drip_body",
    "/weights/drip_headers.pth": "drip_headers",
    "/weights/login.pth": "html",
    "/loop.pth": "redirect_loop",
    "/weights/ftp.pth": "redirect_to_ftp",
    "/weights/redirect.pth": "redirect_to_dot_dot",
}


def start_server(payload: bytes) -> Server:
    server = Server(payload, ROUTES)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_server(server: Server) -> None:
    server.stop.set()
    server.shutdown()
    server.server_close()


def checkpoint_bytes(tmp_path: Path, model: nn.Module, name: str = "weights.pth") -> bytes:
    torch.save({"model": model.state_dict()}, tmp_path / name)
    return (tmp_path / name).read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    cache = tmp_path / "home" / "cache"
    monkeypatch.setenv("FVCORE_CACHE", str(cache))
    return cache


@pytest.fixture
def server(tmp_path, cache):
    model = nn.Linear(8, 8)
    server = start_server(checkpoint_bytes(tmp_path, model))
    server.model = model
    yield server
    stop_server(server)


def files_under(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix != ".lock")


def load(url: str, model: nn.Module = None) -> nn.Module:
    model = model or nn.Linear(8, 8)
    SafeDetectionCheckpointer(model).load(url)
    return model


# ---- the cache path


@pytest.mark.parametrize("path", [
    "/../victim/notes.txt",
    "/weights/../../victim/notes.txt",
    "/weights/../../../victim/notes.txt",
    "/./weights/good.pth",
    "//victim/notes.txt",
    "/weights//good.pth",
])  # fmt: skip
def test_a_url_that_would_leave_the_cache_is_refused_before_any_request(tmp_path, cache, server, path):
    """The cache path once was <cache>/<url path>: '..' wrote the download outside the cache, and a file that
    could not be loaded there (any file: it is "the cached copy") was deleted."""
    victim = tmp_path / "home" / "victim" / "notes.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("the user's notes")
    url = server.url(path)
    with pytest.raises(CheckpointFileError, match="Refusing the URL") as error:
        load(url)
    assert url in str(error.value) and "outside the download cache" in str(error.value)
    assert victim.read_text() == "the user's notes"
    assert server.requests == []
    assert files_under(tmp_path / "home") == ["victim/notes.txt"]


def test_a_host_named_dot_dot_is_refused(cache):
    with pytest.raises(CheckpointFileError, match=r"http://\.\./victim/notes\.txt: its host has a '\.\.' segment"):
        load("http://../victim/notes.txt")


def test_detectron2_model_zoo_paths_go_through_the_same_checks(cache):
    """detectron2://X is https://dl.fbaipublicfiles.com/detectron2/X, downloaded here (iopath's own download
    derives the cache path from the URL path as it is, '..' included)."""
    with pytest.raises(CheckpointFileError, match=r"Refusing the URL https://dl\.fbaipublicfiles\.com/detectron2/"
                                                  r"\.\./\.\./notes\.txt: its path has a '\.\.' segment"):
        load("detectron2://../../notes.txt")


def test_a_redirect_does_not_change_where_the_file_is_cached(cache, server):
    """The cache key is the URL asked for; a redirect to a '..' path downloads into the cache like any other."""
    model = load(server.url("/weights/redirect.pth"))
    assert torch.equal(model.weight, server.model.weight)
    assert server.requests == ["/weights/redirect.pth", "/victim/notes.txt"]  # urllib resolved the '..'
    assert files_under(cache) == ["dinat_m2f/http/127.0.0.1_%d/weights/redirect.pth" % server.server_address[1]]


@settings(max_examples=300, deadline=None)
@given(path=st.lists(st.text(alphabet=st.sampled_from("./\\%2e:@?#\x00ab"), max_size=6), min_size=1, max_size=5))
def test_every_cache_path_is_inside_the_cache_or_refused(path):
    url = "http://example.com/" + "/".join(path)
    root = "/cache/root"
    try:
        local = cache_path(url, root)
    except CheckpointFileError as error:
        assert "Refusing the URL" in str(error)
        return
    assert os.path.normpath(local) == local and local.startswith(root + "/dinat_m2f/http/example.com/"), local


def test_host_and_port_are_part_of_the_cache_key(tmp_path, cache, server):
    """The same path on another server is another file (it once reused the first server's copy)."""
    other_model = nn.Linear(8, 8)
    other = start_server(checkpoint_bytes(tmp_path, other_model, "other.pth"))
    try:
        first, second = load(server.url("/weights/good.pth")), load(other.url("/weights/good.pth"))
        assert torch.equal(first.weight, server.model.weight)
        assert torch.equal(second.weight, other_model.weight)
        assert not torch.equal(first.weight, second.weight)
        assert len(files_under(cache)) == 2
        # "localhost" is another host name than 127.0.0.1: a third copy
        load(server.url("/weights/good.pth").replace("127.0.0.1", "localhost"))
        assert len(files_under(cache)) == 3
    finally:
        stop_server(other)


def test_the_query_is_sent_and_is_part_of_the_cache_key(tmp_path, cache, server):
    """A query (a token, a file id) once was dropped silently, and the download failed without it. It is sent
    verbatim, separates the cached copies (hashed: no token in file names), and detectron2's
    matching_heuristics stays with the loader."""
    models = [nn.Linear(8, 8), nn.Linear(8, 8)]
    server.payloads_by_query = {
        f"token=secret&id={i}": checkpoint_bytes(tmp_path, m, f"q{i}.pth") for i, m in enumerate(models)
    }
    for i, expected in enumerate(models):
        loaded = load(server.url(f"/weights/by_query.pth?token=secret&id={i}&matching_heuristics=True"))
        assert torch.equal(loaded.weight, expected.weight)
    assert server.requests == ["/weights/by_query.pth?token=secret&id=0", "/weights/by_query.pth?token=secret&id=1"]
    cached = files_under(cache)
    assert len(cached) == 2 and all("secret" not in name and name.endswith("/by_query.pth") for name in cached)
    load(server.url("/weights/by_query.pth?token=secret&id=1"))  # from the cache
    assert len(server.requests) == 2

    with pytest.raises(CheckpointFileError, match=r"by_query\.pth\?id=0: HTTP 403"):
        load(server.url("/weights/by_query.pth?id=0"))


# ---- limits


def test_an_endless_body_stops_at_the_size_cap(cache, server, monkeypatch):
    """A server sending an endless body filled the disk (4.4 GB in 18 s)."""
    monkeypatch.setenv(MAX_BYTES_ENV, str(3 << 20))
    url = server.url("/weights/endless.pth")
    with pytest.raises(CheckpointFileError) as error:
        load(url)
    assert f"Cannot download {url}: the server sends more, over the limit of {3 << 20} bytes" in str(error.value)
    assert MAX_BYTES_ENV in str(error.value)
    assert files_under(cache) == []


def test_an_announced_size_over_the_cap_is_refused_before_reading(cache, server):
    url = server.url("/weights/huge.pth")
    with pytest.raises(CheckpointFileError, match=f"announces {1 << 40} bytes, over the limit of {4 << 30}"):
        load(url)
    assert files_under(cache) == []


@pytest.mark.parametrize("route", ["/weights/drip.pth", "/weights/drip_headers.pth"])
def test_a_dripping_server_is_given_up_at_the_deadline(cache, server, monkeypatch, route):
    """A byte every 0.2 s (in the body, or a header line at a time) defeats any per-read timeout; the
    overall deadline (2 s here) stops it."""
    monkeypatch.setenv(TIMEOUT_ENV, "2")
    url = server.url(route)
    start = time.monotonic()
    with pytest.raises(CheckpointFileError, match=f"Cannot download {url}: not finished within 2 s") as error:
        load(url)
    assert time.monotonic() - start < 6
    assert TIMEOUT_ENV in str(error.value)
    assert files_under(cache) == []


@pytest.mark.parametrize("name, value", [(TIMEOUT_ENV, "soon"), (TIMEOUT_ENV, "0"), (MAX_BYTES_ENV, "-1"),
                                         (TIMEOUT_ENV, "inf")])
def test_bad_limits_are_named(cache, server, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"\\${name}='{value}': give a positive finite"):
        load(server.url("/weights/good.pth"))


def test_a_content_length_shorter_than_the_body_is_named_and_not_kept(cache, server):
    """The announced length is what is read: the copy is the file's first half, which does not load."""
    url = server.url("/weights/short_length.pth")
    with pytest.raises(CheckpointFileError) as error:
        load(url)
    assert url in str(error.value) and "is truncated" in str(error.value) and "cached copy was removed" in str(error.value)
    assert files_under(cache) == []


def test_redirect_loops_and_redirects_to_other_schemes_are_errors(cache, server):
    with pytest.raises(CheckpointFileError, match=r"Cannot download .*/loop\.pth: HTTP 302 .*infinite loop"):
        load(server.url("/loop.pth"))
    with pytest.raises(CheckpointFileError, match=r"ftp\.pth: HTTP 302 redirected to a non-http\(s\) URL ftp://"):
        load(server.url("/weights/ftp.pth"))
    assert files_under(cache) == []


def test_an_html_page_instead_of_weights_is_named_and_not_kept(cache, server):
    url = server.url("/weights/login.pth")
    with pytest.raises(CheckpointFileError) as error:
        load(url)
    message = str(error.value)
    assert url in message and "is corrupt or not a checkpoint" in message and "cached copy was removed" in message
    assert files_under(cache) == []


# ---- interruptions

DOWNLOAD = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from dinat_m2f.checkpoint import cached_download
cached_download(sys.argv[1])
"""


@pytest.mark.parametrize("signum, returncode", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)])
def test_an_interrupted_download_leaves_no_temporary_file(cache, server, signum, returncode):
    """SIGTERM ends the process as it would have (after removing the temporary file); Ctrl-C raises
    KeyboardInterrupt, which removes it too (and Python then ends by SIGINT)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), FVCORE_CACHE=str(cache))
    process = subprocess.Popen([sys.executable, "-c", DOWNLOAD, server.url("/weights/drip.pth")], env=env,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(cache.rglob("*.tmp")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == returncode, stderr
    assert files_under(cache) == []


def test_a_download_killed_outright_is_cleaned_up_by_the_next(cache, server):
    """SIGKILL cannot be handled: its temporary file is removed by the next download of that URL."""
    url = server.url("/weights/good.pth")
    leftover = Path(cache_path(url) + ".deadbeef.tmp")
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")
    load(url)
    assert not leftover.exists()
    assert files_under(cache) == [str(Path(cache_path(url)).relative_to(cache))]


FULL_DISK = """
import os, resource, signal, sys
from torch import nn
from dinat_m2f.checkpoint import CheckpointFileError, SafeDetectionCheckpointer, cached_download
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
os.makedirs(sys.argv[1])
checkpointer = SafeDetectionCheckpointer(nn.Linear(2, 2), sys.argv[1])
checkpointer.save("model_0000004", iteration=4)
checkpointer.model = nn.Linear(200, 200)  # 160 kB
try:
    checkpointer.save("model_0000009", iteration=9)
except Exception as error:  # torch reports the failed write as a RuntimeError
    print("save failed:", error.__context__ or error, flush=True)
try:
    cached_download(sys.argv[2])
except CheckpointFileError as error:
    print("download:", error, flush=True)
"""


def test_a_full_disk_leaves_no_partial_file(tmp_path, cache):
    """Writes that fail (here past a file-size limit, as on a full disk) leave the previous checkpoint, no
    partial checkpoint, and nothing in the download cache."""
    big = start_server(checkpoint_bytes(tmp_path, nn.Linear(200, 200)))
    try:
        url = big.url("/weights/good.pth")
        env = dict(os.environ, PYTHONPATH=str(REPO), FVCORE_CACHE=str(cache))
        result = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "out"), url], env=env,
                                capture_output=True, text=True, timeout=120)
    finally:
        stop_server(big)
    assert result.returncode == 0, result.stderr
    assert "save failed: [Errno 27] File too large" in result.stdout
    assert f"download: Cannot download {url}: cannot write to the cache (File too large)" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["last_checkpoint", "model_0000004.pth"]
    assert (tmp_path / "out" / "last_checkpoint").read_text() == "model_0000004.pth"
    assert files_under(cache) == []
