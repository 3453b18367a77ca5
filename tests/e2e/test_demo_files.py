"""demo/demo.py's file handling against careless input: results never overwrite each other nor an input (the
same name in two folders, x.png and x.tif, inputs named like another's results, --output equal to the input
folder), and inputs that are not regular files (a FIFO would block forever) are skipped and named."""
import logging
import os
import threading

import numpy as np
import pytest
from PIL import Image

from log_capture import RecordLogs
from test_demo import CONFIG, demo, demo_opts, write_video  # noqa: F401  (the demo test's model options)

RESULTS = ("_panoptic.png", "_panoptic.json", "_instances.json", "_sem_seg.png")


def write_image(path, height, width):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(height * 1000 + width)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def run(demo_opts, *arguments):  # noqa: F811
    return demo.main(["--config-file", str(CONFIG), *arguments, "--confidence-threshold", "0.0",
                      "--opts", *demo_opts])


def test_results_never_overwrite_each_other(tmp_path, demo_opts):  # noqa: F811
    """Two inputs named x.png in two folders, or x.png and x.tif, wrote the same result files ("Processed 3
    images", 2 result sets). Every input now gets its own visualization and results."""
    sizes = {"a/x.png": (40, 48), "a/x.tif": (36, 44), "a/x_1.png": (32, 40), "a/x_panoptic.png": (28, 36),
             "b/x.png": (24, 32)}
    for name, size in sizes.items():
        write_image(tmp_path / "in" / name, *size)
    before = {name: (tmp_path / "in" / name).read_bytes() for name in sizes}
    with RecordLogs(logging.getLogger("dinat_m2f.demo")) as logs:
        status = run(demo_opts, "--input", str(tmp_path / "in" / "a"), str(tmp_path / "in" / "b"),
                     "--output", str(tmp_path / "out"))
    assert status == 0
    written = {name: Image.open(tmp_path / "out" / name).size[::-1] for name in
               ["x.png", "x_1.tif", "x_1_1.png", "x_panoptic_1.png", "x_2.png"]}
    assert written == {"x.png": (40, 48), "x_1.tif": (36, 44), "x_1_1.png": (32, 40),
                       "x_panoptic_1.png": (28, 36), "x_2.png": (24, 32)}
    stems = ["x", "x_1", "x_1_1", "x_panoptic_1", "x_2"]
    expected = {name for name in written} | {stem + suffix for stem in stems for suffix in RESULTS}
    assert {p.name for p in (tmp_path / "out").iterdir()} == expected  # 5 visualizations + 5 result sets
    assert {name: (tmp_path / "in" / name).read_bytes() for name in sizes} == before
    assert f"{tmp_path / 'in' / 'b' / 'x.png'} is written as {tmp_path / 'out' / 'x_2.png'}" in "\n".join(logs.messages)


@pytest.mark.parametrize("output", ["in", "in/photo.png"])
def test_an_output_that_would_overwrite_an_input_is_refused(tmp_path, demo_opts, output):  # noqa: F811
    """--output equal to the input folder replaced the photos with visualizations (and the input's own name as
    the single output file would). Refused before the model is loaded (the --onnx file does not exist)."""
    write_image(tmp_path / "in" / "photo.png", 40, 48)
    write_image(tmp_path / "in" / "photo_panoptic.png", 20, 24)
    before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    inputs = [str(tmp_path / "in")] if output == "in" else [str(tmp_path / "in" / "photo.png")]
    with pytest.raises(SystemExit, match=f"--output {tmp_path / output} would overwrite the input "):
        run(demo_opts, "--input", *inputs, "--output", str(tmp_path / output), "--onnx", str(tmp_path / "none.onnx"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before


def test_a_video_output_that_is_the_input_is_refused(tmp_path, demo_opts):  # noqa: F811
    video = tmp_path / "clip.mp4"
    write_video(video, num_frames=2)
    before = video.read_bytes()
    with pytest.raises(SystemExit, match=f"would overwrite the input video {video}"):
        demo.main(["--config-file", str(CONFIG), "--video-input", str(video), "--output", str(tmp_path),
                   "--onnx", str(tmp_path / "none.onnx"), "--opts", *demo_opts])
    assert video.read_bytes() == before


def test_inputs_that_are_not_regular_files_are_skipped_and_named(tmp_path, demo_opts):  # noqa: F811
    """A FIFO as an input blocked forever (reading waits for a writer)."""
    write_image(tmp_path / "in" / "good.png", 40, 48)
    os.mkfifo(tmp_path / "in" / "pipe.png")
    os.mkfifo(tmp_path / "given.jpg")
    (tmp_path / "in" / "folder.png").mkdir()

    def unblock():  # should the demo open a FIFO, a writer ends its wait so that the test fails, not hangs
        for fifo in (tmp_path / "in" / "pipe.png", tmp_path / "given.jpg"):
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:  # no reader: as it should be
                pass

    watchdog = threading.Timer(60, unblock)
    watchdog.start()
    try:
        with RecordLogs(logging.getLogger("dinat_m2f.demo")) as logs:
            status = run(demo_opts, "--input", str(tmp_path / "in"), str(tmp_path / "given.jpg"),
                         "--output", str(tmp_path / "out"))
    finally:
        watchdog.cancel()
    assert status == 1
    log = "\n".join(logs.messages)
    assert f"Skipping {tmp_path / 'in' / 'pipe.png'}: it is a FIFO (named pipe); only regular files are read" in log
    assert f"Skipping {tmp_path / 'given.jpg'}: it is a FIFO (named pipe)" in log
    assert f"Skipping {tmp_path / 'in' / 'folder.png'}: it is a folder" in log
    assert (tmp_path / "out" / "good.png").exists() and (tmp_path / "out" / "good_sem_seg.png").exists()
