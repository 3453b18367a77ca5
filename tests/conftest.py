"""Shared test helpers: the reference fixtures live in tests/fixtures (see its README); a local HTTP server for
downloads; tests marked `cuda` are skipped where no CUDA GPU is."""
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
from project_paths import FIXTURES


def load_fixture(name: str):
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"reference fixture {path} is missing (tests/fixtures/README.md lists them)")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def na_reference():
    return load_fixture("na_reference.pt")


@pytest.fixture(scope="session")
def m2f_reference():
    return load_fixture("m2f_dinat_reference.pt")


class FileServer(http.server.ThreadingHTTPServer):
    """Serves the files of `folder` over HTTP on 127.0.0.1 (a stand-in for a download site); `requests` counts
    the GET requests per path."""

    def __init__(self, folder: Path):
        self.folder, self.requests = folder, {}
        super().__init__(("127.0.0.1", 0), functools.partial(_FileHandler, directory=str(folder)))

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _FileHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests[self.path] = self.server.requests.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path, monkeypatch):
    """A FileServer of tmp_path/served, with the download cache ($FVCORE_CACHE) in tmp_path/cache."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "served").mkdir()
    server = FileServer(tmp_path / "served")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(no_gpu)
