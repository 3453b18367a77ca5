"""demo/app.py served on a free localhost port (one app process for this module) and used as people use it: in
headless Chromium (upload, Segment, the visualization, the table's class names, a result file downloaded and equal
to demo/demo.py's file for the same image, a screenshot, an unreadable upload's message, no request leaving the
machine), through gradio_client (/segment with just an image and a task, every task's files equal to the demo's)
and through the HTTP API as docs/DEMO.md's curl commands call it.

The model is the synthetic panoptic config with random seeded weights saved by the project's checkpointer and
lowered panoptic thresholds, so that it returns segments. The browser is Debian's chromium (.ci/run installs it),
driven by Playwright with a fresh profile and the flags that keep it from calling out."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from project_paths import CONFIGS, REPO, import_script
from random_weights import random_synthetic_opts

from dinat_m2f.app import SEGMENT_COLUMNS

pytest.importorskip("gradio", reason="the web demo's extra is not installed: pip install '.[app]'")

CONFIG = str(CONFIGS / "synthetic" / "panoptic" / "dinat_mini.yaml")
CLASS_NAMES = ["circle", "square", "triangle", "sky", "grass"]
IMAGE = REPO / "demo" / "examples" / "shapes_0.jpg"  # 242x195: made smaller by the test resize (128)
THRESHOLD = 0.2
RESULT_FILES = {"panoptic": ["shapes_0_panoptic.png", "shapes_0_panoptic.json"],
                "instance": ["shapes_0_instances.json"], "semantic": ["shapes_0_sem_seg.png"]}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-dev-shm-usage"]
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_served(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"demo/app.py exited with status {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"demo/app.py did not serve {url} within {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def opts(tmp_path_factory):
    return random_synthetic_opts(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def app_url(opts, tmp_path_factory):
    """The URL of demo/app.py, started with its temporary files (Gradio's and the results) in a test folder."""
    folder = tmp_path_factory.mktemp("app")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(folder / "gradio"),
           "TMPDIR": str(folder), "OMP_NUM_THREADS": "1"}
    log = folder / "app.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "demo" / "app.py"), "--config-file", CONFIG, "--port", str(port),
             "--confidence-threshold", str(THRESHOLD), "--opts", *opts],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
    try:
        wait_until_served(process, url, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def demo_files(opts, tmp_path_factory):
    """demo/demo.py's files for IMAGE."""
    out = tmp_path_factory.mktemp("demo")
    demo = import_script(REPO / "demo" / "demo.py", "demo")
    assert demo.main(["--config-file", CONFIG, "--input", str(IMAGE), "--output", str(out),
                      "--confidence-threshold", str(THRESHOLD), "--opts", *opts]) == 0
    return out


@pytest.fixture
def broken_image(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return path


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it as root: apt-get install chromium)")
    return path


def test_the_page_in_a_browser(app_url, demo_files, broken_image, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser driver: pip install playwright")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
            accept_downloads=True, viewport={"width": 1280, "height": 900})
        try:
            page = browser.new_page()
            outside = []
            page.on("request", lambda request: outside.append(request.url)
                    if not request.url.startswith((app_url, "data:", "blob:")) else None)
            page.goto(app_url)
            page.locator("#image input[type=file]").set_input_files(str(IMAGE))
            page.get_by_role("button", name="Segment").click()
            page.locator("#visualization img").wait_for(timeout=120_000)
            assert page.locator("#summary").inner_text().startswith("panoptic: ")

            page.wait_for_function("document.querySelector('#visualization img').naturalWidth > 0")
            drawn = page.locator("#visualization img").evaluate("image => [image.naturalWidth, image.naturalHeight]")
            assert drawn == [159, 128]  # at the model's test size

            table = page.get_by_role("grid", name="Segments")
            first_class = table.get_by_role("gridcell").nth(1)
            sync_api.expect(first_class).to_have_text(re.compile("|".join(CLASS_NAMES)))  # may come after the image
            assert table.get_by_role("columnheader").all_inner_texts() == list(SEGMENT_COLUMNS)
            rows = [cells for row in table.get_by_role("row").all() if (cells := row.get_by_role("gridcell").all_inner_texts())]
            assert rows and all(row[1] in CLASS_NAMES for row in rows), rows

            for name in RESULT_FILES["panoptic"]:
                with page.expect_download() as download:
                    page.locator(f"#files a[download='{name}']").click()
                assert download.value.suggested_filename == name
                assert Path(download.value.path()).read_bytes() == (demo_files / name).read_bytes(), name
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)

            page.locator("#image input[type=file]").set_input_files(str(broken_image))
            page.get_by_role("button", name="Segment").click()
            error = page.locator(".toast-body", has_text="Cannot read image file broken.png")
            error.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "unreadable.png"))  # the viewport, with the message
        finally:
            browser.close()
    assert not outside, f"the page made requests outside the app: {outside}"


def test_segment_api_with_gradio_client(app_url, demo_files, broken_image, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # the client's telemetry
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False, download_files=str(tmp_path))
    for task, names in RESULT_FILES.items():
        visualization, table, files, summary = client.predict(handle_file(str(IMAGE)), task, api_name="/segment")
        assert Path(visualization).suffix == ".png" and summary.startswith(f"**{task}**")
        assert table["headers"] == list(SEGMENT_COLUMNS) and table["data"]
        assert all(row[1] in CLASS_NAMES for row in table["data"])
        assert [Path(file).name for file in files] == names
        for file in files:
            assert Path(file).read_bytes() == (demo_files / Path(file).name).read_bytes(), file
    # the threshold, third, is optional: here it keeps only instances scoring at least 0.9 (none)
    _, table, files, _ = client.predict(handle_file(str(IMAGE)), "instance", 0.9, api_name="/segment")
    assert table["data"] == [] and json.loads(Path(files[0]).read_text()) == []

    with pytest.raises(AppError, match="Cannot read image file broken.png"):
        client.predict(handle_file(str(broken_image)), "panoptic", api_name="/segment")
    with pytest.raises(AppError, match="Task 'depth': this model offers panoptic, instance, semantic"):
        client.predict(handle_file(str(IMAGE)), "depth", api_name="/segment")
    with pytest.raises(AppError, match="Upload an image first"):
        client.predict(None, "panoptic", api_name="/segment")


def http(url: str, data: bytes = None, content_type: str = None) -> bytes:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type} if content_type else {})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.read()


def test_segment_http_api_as_the_docs_call_it(app_url, demo_files):
    """docs/DEMO.md's curl commands: upload the file, call /segment with named inputs (image and task only), read
    the result event, download a file."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{IMAGE.name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + IMAGE.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    (uploaded,) = json.loads(http(app_url + "gradio_api/upload", body, f"multipart/form-data; boundary={boundary}"))
    call = json.dumps({"image": {"path": uploaded, "meta": {"_type": "gradio.FileData"}}, "task": "semantic"})
    event_id = json.loads(http(app_url + "gradio_api/call/v2/segment", call.encode(), "application/json"))["event_id"]
    events = http(app_url + f"gradio_api/call/segment/{event_id}").decode().splitlines()
    assert events[0] == "event: complete", events
    visualization, table, files, summary = json.loads(events[1][len("data: "):])
    assert summary.startswith("**semantic**") and table["headers"] == list(SEGMENT_COLUMNS)
    (sem_seg,) = files
    assert sem_seg["orig_name"] == "shapes_0_sem_seg.png"
    assert http(sem_seg["url"]) == (demo_files / "shapes_0_sem_seg.png").read_bytes()
