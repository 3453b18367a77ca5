"""Checkpoints survive kills and broken files: atomic writes (a process killed while writing leaves no
partial file under a checkpoint's name, nor an empty last_checkpoint), a resume that falls back to the
newest readable checkpoint and explains why, and http(s) weights downloaded once into the cache (a broken
download names the URL and leaves no file there), against a real HTTP server on 127.0.0.1."""
import http.server
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

from dinat_m2f.checkpoint import CheckpointFileError, SafeDetectionCheckpointer
from log_capture import RecordLogs
from project_paths import REPO

# Saves model_0000004, then gets signal argv[3] the moment it opens a file whose name contains argv[2] for writing.
SAVE_THEN_DIE = """
import builtins, os, signal, sys
from torch import nn
from dinat_m2f.checkpoint import SafeDetectionCheckpointer
save_dir, victim, signum = sys.argv[1], sys.argv[2], int(sys.argv[3])
checkpointer = SafeDetectionCheckpointer(nn.Linear(2, 2), save_dir)
checkpointer.save("model_0000004", iteration=4)
real_open = builtins.open
def open_then_die(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if victim in os.path.basename(str(file)) and ("w" in mode or "x" in mode):
        os.kill(os.getpid(), signum)
    return f
builtins.open = open_then_die
checkpointer.save("model_0000009", iteration=9)
"""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("victim", ["model_0000009", "last_checkpoint"])
def test_a_kill_while_saving_leaves_the_previous_checkpoint_in_place(tmp_path, victim, signum):
    """Killed while writing the checkpoint file, or while replacing last_checkpoint: every file under a
    checkpoint's name is complete, last_checkpoint names a readable checkpoint, --resume continues there.
    SIGTERM and Ctrl-C remove the temporary file before the process ends; after SIGKILL the resume does."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", SAVE_THEN_DIE, str(tmp_path), victim, str(int(signum))], env=env,
                            timeout=120, stderr=subprocess.PIPE, text=True)
    assert result.returncode == -signum, result.stderr  # the process ends by the signal
    if signum != signal.SIGKILL:
        assert not list(tmp_path.glob("*.tmp"))

    named = (tmp_path / "last_checkpoint").read_text()
    assert named in ("model_0000004.pth", "model_0000009.pth")
    for checkpoint in tmp_path.glob("*.pth"):
        assert torch.load(checkpoint, weights_only=True)["iteration"] in (4, 9)
    assert not (tmp_path / "model_0000009.pth").exists() or victim == "last_checkpoint"

    resumer = SafeDetectionCheckpointer(nn.Linear(2, 2), str(tmp_path))
    assert resumer.resume_or_load("", resume=True)["iteration"] == int(named[6:13])
    assert not list(tmp_path.glob("*.tmp")), "the interrupted write's temporary file is removed on resume"


def save_three(save_dir):
    """model_0000001/3/5.pth (iteration and weights differ), last_checkpoint naming model_0000005.pth."""
    for iteration in (1, 3, 5):
        model = nn.Linear(2, 2)
        nn.init.constant_(model.weight, iteration)
        checkpointer = SafeDetectionCheckpointer(model, str(save_dir))
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        os.utime(save_dir / f"model_{iteration:07d}.pth", (iteration, iteration))  # mtime order = iteration


def resume(save_dir):
    model = nn.Linear(2, 2)
    checkpointer = SafeDetectionCheckpointer(model, str(save_dir))
    with RecordLogs(checkpointer.logger) as logs:
        extra = checkpointer.resume_or_load("", resume=True)
    assert model.weight[0, 0].item() == extra["iteration"]
    return extra["iteration"], "\n".join(logs.messages)


def test_resume_skips_a_truncated_newest_checkpoint_and_says_why(tmp_path):
    save_three(tmp_path)
    newest = tmp_path / "model_0000005.pth"
    newest.write_bytes(newest.read_bytes()[:300])
    iteration, log = resume(tmp_path)
    assert iteration == 3
    assert f"Cannot resume from {newest}" in log and "is truncated" in log


def test_resume_explains_an_empty_or_dangling_last_checkpoint(tmp_path):
    save_three(tmp_path)
    (tmp_path / "last_checkpoint").write_text("")
    iteration, log = resume(tmp_path)
    assert iteration == 5 and "last_checkpoint is empty" in log

    (tmp_path / "last_checkpoint").write_text("model_0000007.pth")
    (tmp_path / "model_0000005.pth").write_bytes(b"")
    iteration, log = resume(tmp_path)
    assert iteration == 3
    assert "names model_0000007.pth, which does not exist" in log
    assert "model_0000005.pth: it is empty" in log


def test_resume_with_no_readable_checkpoint_lists_every_file(tmp_path):
    save_three(tmp_path)
    for path in tmp_path.glob("*.pth"):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointFileError, match="no checkpoint in") as error:
        resume(tmp_path)
    assert all(f"model_000000{i}.pth" in str(error.value) for i in (1, 3, 5))


class Server(http.server.ThreadingHTTPServer):
    """/good.pth, /cut.pth (Content-Length says more than is sent), /unsized.pth (half the file, no
    Content-Length), anything else 404. Counts the requests per path."""

    def __init__(self, payload: bytes):
        self.payload, self.requests = payload, {}
        super().__init__(("127.0.0.1", 0), Handler)

    def url(self, name):
        return f"http://127.0.0.1:{self.server_address[1]}/weights/{name}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        payload = self.server.payload
        self.server.requests[self.path] = self.server.requests.get(self.path, 0) + 1
        name = os.path.basename(self.path)
        if name not in ("good.pth", "cut.pth", "unsized.pth"):
            self.send_error(404, "File not found")
            return
        self.send_response(200)
        if name != "unsized.pth":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload if name == "good.pth" else payload[: len(payload) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    model = nn.Linear(8, 8)
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pth")
    server = Server((tmp_path / "weights.pth").read_bytes())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.model = model
    yield server
    server.shutdown()
    server.server_close()


def cached_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_url_weights_download_once_into_the_cache(tmp_path, server):
    for _ in range(2):
        model = nn.Linear(8, 8)
        SafeDetectionCheckpointer(model).load(server.url("good.pth"))
        assert torch.equal(model.weight, server.model.weight)
    assert server.requests == {"/weights/good.pth": 1}
    assert cached_files(tmp_path) == ["good.pth"]


@pytest.mark.parametrize("name, cause", [
    ("missing.pth", "HTTP 404"),
    ("cut.pth", "received"),
    ("unsized.pth", "is truncated"),
])  # fmt: skip
def test_a_broken_download_names_the_url_and_leaves_no_file(tmp_path, server, name, cause):
    url = server.url(name)
    with pytest.raises(CheckpointFileError) as error:
        SafeDetectionCheckpointer(nn.Linear(8, 8)).load(url)
    assert url in str(error.value) and cause in str(error.value), str(error.value)
    assert cached_files(tmp_path) == []
