"""demo/demo.py: inputs (files, folders, globs, grayscale/RGBA/tiny/unreadable images, a video, folders and
patterns without images, a truncated video, an unwritable video output) and the machine-readable results it
writes (COCO panoptic PNG + JSON, instance RLE JSON, semantic PNG).

The model is the synthetic panoptic config (configs/synthetic/panoptic/dinat_mini.yaml) with random,
seeded weights saved to a .pth and loaded through MODEL.WEIGHTS: these tests are about the demo's I/O and
formats, not accuracy. To make a random model return segments and instances, the test lowers the
panoptic thresholds and --confidence-threshold to 0. The dataset metadata is registered here with dataset
category ids that differ from the contiguous ones (11-13 things, 21-22 stuff), so that the id mapping in
the written results is checked.
"""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from panopticapi.utils import rgb2id
from PIL import Image
from project_paths import REPO as ROOT

from dinat_m2f import Predictor
from log_capture import RecordLogs
from project_paths import import_script

demo = import_script(ROOT / "demo" / "demo.py", "demo")

# pycocotools' decode warns under numpy 2 (its own __array__ call); not this project's concern
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

CONFIG = ROOT / "configs" / "synthetic" / "panoptic" / "dinat_mini.yaml"
DATASET = "demo_test_panoptic"
THING_IDS = {11: 0, 12: 1, 13: 2}
STUFF_IDS = {11: 0, 12: 1, 13: 2, 21: 3, 22: 4}


def register_metadata() -> None:
    if "thing_classes" not in MetadataCatalog.get(DATASET).as_dict():
        MetadataCatalog.get(DATASET).set(
            thing_classes=["disc", "square", "triangle"],
            stuff_classes=["disc", "square", "triangle", "sky", "ground"],
            thing_dataset_id_to_contiguous_id=THING_IDS,
            stuff_dataset_id_to_contiguous_id=STUFF_IDS,
        )


@pytest.fixture(scope="module")
def demo_opts(tmp_path_factory):
    register_metadata()
    opts = [
        "DATASETS.TRAIN", f"('{DATASET}',)", "DATASETS.TEST", f"('{DATASET}',)",
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0", "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0",
        "INPUT.MIN_SIZE_TEST", "0",  # no resize: the tiny image reaches the backbone tiny
    ]
    cfg = demo.setup_cfg(demo.get_parser().parse_args(["--config-file", str(CONFIG), "--opts", *opts]))
    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("weights") / "random_init.pth"
    torch.save({"model": build_model(cfg).state_dict(), "iteration": 0}, weights)
    return ["MODEL.WEIGHTS", str(weights), *opts]


@pytest.fixture(scope="module")
def predictor(demo_opts):
    return Predictor(demo.setup_cfg(demo.get_parser().parse_args(["--config-file", str(CONFIG), "--opts", *demo_opts])))


def write_inputs(folder: Path) -> dict:
    """Writes the demo's inputs; returns {file name: path}."""
    rng = np.random.default_rng(0)
    images = {
        "rgb.jpg": Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)),
        "gray.png": Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8), "L"),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (36, 44, 4), dtype=np.uint8), "RGBA"),
        "tiny.png": Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)),
    }
    (folder / "dir").mkdir()
    (folder / "glob").mkdir()
    paths = {"rgb.jpg": folder / "rgb.jpg", "gray.png": folder / "dir" / "gray.png",
             "rgba.png": folder / "dir" / "rgba.png", "tiny.png": folder / "glob" / "tiny.png"}
    for name, path in paths.items():
        images[name].save(path)
    (folder / "dir" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return paths


def write_video(path: Path, num_frames: int, size=(64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, size)
    rng = np.random.default_rng(1)
    for _ in range(num_frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_demo_images_and_video(tmp_path, demo_opts, predictor):
    inputs = write_inputs(tmp_path)
    write_video(tmp_path / "clip.mp4", num_frames=3)
    out = tmp_path / "out"
    with RecordLogs(logging.getLogger("dinat_m2f.demo")) as logs:
        status = demo.main([
            "--config-file", str(CONFIG),
            "--input", str(tmp_path / "rgb.jpg"), str(tmp_path / "dir"), str(tmp_path / "glob" / "t*.png"),
            "--video-input", str(tmp_path / "clip.mp4"),
            "--output", str(out), "--confidence-threshold", "0.0",
            "--opts", *demo_opts,
        ])

    # the unreadable file is reported by name and skipped; the others are all done
    assert status == 1
    assert any("broken.png" in m and "Skipping" in m for m in logs.messages)
    assert not (out / "broken.png").exists()

    segments_seen = instances_seen = 0
    for name, path in inputs.items():
        stem = Path(name).stem
        image = read_image(str(path), format="RGB")
        expected = predictor(image)
        height, width = image.shape[:2]

        vis = cv2.imread(str(out / name))
        assert vis.shape == (height, width, 3), name

        # panoptic: PNG ids (R + 256 G + 256^2 B) are exactly the JSON segments and the model's map
        ids = rgb2id(read_rgb(out / f"{stem}_panoptic.png"))
        annotation = load_json(out / f"{stem}_panoptic.json")
        assert annotation["file_name"] == f"{stem}_panoptic.png" and annotation["image_id"] == stem
        panoptic_seg, segments_info = expected["panoptic_seg"]
        np.testing.assert_array_equal(ids, panoptic_seg.numpy())
        assert {s["id"] for s in annotation["segments_info"]} == set(np.unique(ids)) - {0}
        by_id = {s["id"]: s for s in segments_info}
        for segment in annotation["segments_info"]:
            mask = ids == segment["id"]
            assert segment["area"] == mask.sum()
            assert segment["bbox"] == list(mask_util.toBbox(mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))))
            info = by_id[segment["id"]]
            id_map = THING_IDS if info["isthing"] else STUFF_IDS
            assert id_map[segment["category_id"]] == info["category_id"]
        segments_seen += len(annotation["segments_info"])

        # instances: RLE decodes to the model's masks; category ids are dataset ids
        records = load_json(out / f"{stem}_instances.json")
        instances = expected["instances"]
        assert len(records) == len(instances) > 0
        for record, mask, score, category in zip(records, instances.pred_masks, instances.scores,
                                                 instances.pred_classes):
            decoded = mask_util.decode(record["segmentation"])
            assert decoded.shape == (height, width)
            np.testing.assert_array_equal(decoded, mask.numpy() > 0.5)
            assert record["score"] == pytest.approx(float(score))
            assert THING_IDS[record["category_id"]] == int(category)
            assert record["bbox"] == list(mask_util.toBbox(record["segmentation"]))
        instances_seen += len(records)

        # semantic: label ids are the dataset ids of the per-pixel argmax
        labels = np.asarray(Image.open(out / f"{stem}_sem_seg.png"))
        contiguous_to_dataset = {c: d for d, c in STUFF_IDS.items()}
        expected_labels = np.vectorize(contiguous_to_dataset.get)(expected["sem_seg"].argmax(0).numpy())
        np.testing.assert_array_equal(labels, expected_labels)
    assert segments_seen > 0 and instances_seen > 0

    # video: one visualized frame per input frame, same size
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (48, 64, 3)
        frames += 1
    assert frames == 3


def test_single_output_file_and_threshold(tmp_path, demo_opts, predictor):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    image.save(tmp_path / "photo.png")
    status = demo.main([
        "--config-file", str(CONFIG), "--input", str(tmp_path / "photo.png"),
        "--output", str(tmp_path / "result" / "vis.jpg"), "--confidence-threshold", "0.02", "--opts", *demo_opts,
    ])
    assert status == 0
    assert cv2.imread(str(tmp_path / "result" / "vis.jpg")).shape == (40, 48, 3)
    assert {p.name for p in (tmp_path / "result").iterdir()} == {
        "vis.jpg", "vis_panoptic.png", "vis_panoptic.json", "vis_instances.json", "vis_sem_seg.png"}
    scores = predictor(tmp_path / "photo.png")["instances"].scores
    records = load_json(tmp_path / "result" / "vis_instances.json")
    assert len(records) == int((scores >= 0.02).sum())
    assert all(r["score"] >= 0.02 for r in records)


def test_command_line_with_the_synthetic_config(tmp_path, demo_opts):
    """`python demo/demo.py` as a user runs it, with the synthetic dataset's registered metadata; its log starts
    without third-party notices."""
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 50), dtype=np.uint8)).save(tmp_path / "g.png")
    weights = demo_opts[demo_opts.index("MODEL.WEIGHTS") + 1]
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "demo.py"), "--config-file", str(CONFIG),
         "--input", str(tmp_path / "g.png"), "--output", str(tmp_path / "out"), "--opts", "MODEL.WEIGHTS", weights],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Processed 1 images" in result.stdout + result.stderr
    assert "`torch.jit.script` is deprecated" not in result.stderr  # fvcore's and detectron2's import-time notices
    assert cv2.imread(str(tmp_path / "out" / "g.png")).shape == (30, 50, 3)
    annotation = load_json(tmp_path / "out" / "g_panoptic.json")
    ids = rgb2id(read_rgb(tmp_path / "out" / "g_panoptic.png"))
    assert {s["id"] for s in annotation["segments_info"]} == set(np.unique(ids)) - {0}
    assert isinstance(load_json(tmp_path / "out" / "g_instances.json"), list)
    assert np.asarray(Image.open(tmp_path / "out" / "g_sem_seg.png")).shape == (30, 50)


def test_several_inputs_need_an_output_folder(tmp_path, demo_opts):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / name)
    with pytest.raises(SystemExit, match="2 inputs"):
        demo.main(["--config-file", str(CONFIG), "--input", str(tmp_path / "*.png"),
                   "--output", str(tmp_path / "vis.jpg"), "--opts", *demo_opts])


@pytest.mark.parametrize("output", ["folder_named_clip.mp4", "clip.unknown-container"])
def test_unwritable_video_output_is_an_error(tmp_path, demo_opts, output):
    """OpenCV's writer does not raise when it cannot open its file: the demo used to log "Wrote ..." and exit 0
    with nothing written."""
    write_video(tmp_path / "clip.mp4", num_frames=2)
    if output.startswith("folder"):
        (tmp_path / output).mkdir()
    with RecordLogs(logging.getLogger("dinat_m2f.demo")) as logs:
        with pytest.raises(SystemExit, match=f"Cannot write the video .*{output}"):
            demo.main(["--config-file", str(CONFIG), "--video-input", str(tmp_path / "clip.mp4"),
                       "--output", str(tmp_path / output), "--opts", *demo_opts])
    assert not any(m.startswith("Wrote") for m in logs.messages)


def test_truncated_video_warns_with_the_frames_read(tmp_path, demo_opts):
    """An AVI cut in half still opens and announces its 12 frames; the frames that decode are processed."""
    write_video(tmp_path / "full.avi", num_frames=12)
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    readable = count_frames(tmp_path / "cut.avi")
    assert 0 < readable < 12
    with RecordLogs(logging.getLogger("dinat_m2f.demo")) as logs:
        status = demo.main(["--config-file", str(CONFIG), "--video-input", str(tmp_path / "cut.avi"),
                            "--output", str(tmp_path / "out"), "--opts", *demo_opts])
    assert status == 0
    assert any(f"cut.avi: read {readable} frames of the 12 its header announces" in m for m in logs.messages), \
        logs.messages
    assert count_frames(tmp_path / "out" / "cut.mp4") == readable
    # a complete video gives no warning
    with RecordLogs(logging.getLogger("dinat_m2f.demo")) as logs:
        demo.main(["--config-file", str(CONFIG), "--video-input", str(tmp_path / "full.avi"),
                   "--output", str(tmp_path / "out"), "--opts", *demo_opts])
    assert not any("truncated" in m for m in logs.messages)


def test_folder_or_glob_without_images_exits_non_zero(tmp_path, demo_opts):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no image here")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    for inputs in ([tmp_path / "empty"], [tmp_path / "notes"], [tmp_path / "*.jpg"]):
        with pytest.raises(SystemExit, match="No image in"):
            demo.main(["--config-file", str(CONFIG), "--input", *map(str, inputs),
                       "--output", str(tmp_path / "out"), "--opts", *demo_opts])
    # next to an image: it is processed, the empty folder and the pattern are reported, the status is 1
    with RecordLogs(logging.getLogger("dinat_m2f.demo")) as logs:
        status = demo.main(["--config-file", str(CONFIG),
                            "--input", str(tmp_path / "a.png"), str(tmp_path / "empty"), str(tmp_path / "*.jpg"),
                            "--output", str(tmp_path / "out"), "--opts", *demo_opts])
    assert status == 1
    assert (tmp_path / "out" / "a.png").exists()
    assert f"No image in {tmp_path / 'empty'}" in logs.messages and f"No image in {tmp_path / '*.jpg'}" in logs.messages


def test_command_line_exit_status_without_images(tmp_path, demo_opts):
    (tmp_path / "empty").mkdir()
    weights = demo_opts[demo_opts.index("MODEL.WEIGHTS") + 1]
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "demo.py"), "--config-file", str(CONFIG),
         "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out"), "--opts", "MODEL.WEIGHTS", weights],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path)},
    )
    assert result.returncode == 1 and f"No image in {tmp_path / 'empty'}" in result.stderr, result.stderr[-3000:]


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    return frames


def load_json(path: Path):
    with open(path) as f:
        return json.load(f)
