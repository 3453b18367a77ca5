"""demo/demo.py on images larger than the model's test size: post-processing at the resized size, result files
at the original size (nearest upsampling of the final maps), memory independent of queries x original area;
images the resize keeps or enlarges give byte for byte the files of the full-resolution path.

The model is the demo test's (synthetic panoptic config, random seeded weights, thresholds lowered) with
INPUT.MIN_SIZE_TEST 64 / MAX_SIZE_TEST 192, so that a 2000x2400 image reaches the model as 64x77.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.nn.functional as F
from memory_limit import address_space_budget
from panopticapi.utils import rgb2id
from PIL import Image

from test_demo import CONFIG, STUFF_IDS, THING_IDS, demo, demo_opts, write_video  # noqa: F401  (the demo test's model)

from dinat_m2f import Predictor
from dinat_m2f.results import CategoryIds, write_results

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "192"]
LARGE = (2000, 2400)  # -> 64x77 for the model
# The demo's run at 2000x2400 fitted in 60-160 MB here; the full-resolution outputs (100 instance masks of 4.8 MB,
# 5 x 4.8M float scores, one chunk of 2^24 floats) did not fit in 600 MB.
BUDGET = 300 * 2 ** 20


@pytest.fixture(scope="module")
def predictor(demo_opts):  # noqa: F811
    args = demo.get_parser().parse_args(["--config-file", str(CONFIG), "--opts", *demo_opts, *TEST_SIZE])
    return Predictor(demo.setup_cfg(args))


def full_resolution_outputs(predictor: Predictor, image_rgb: np.ndarray) -> dict:
    """The model's outputs at the image's own size, computed as the demo did before it kept the outputs of
    downscaled images at the resized size."""
    image = image_rgb[:, :, ::-1] if predictor.input_format == "BGR" else image_rgb
    image = predictor.resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    height, width = image_rgb.shape[:2]
    with torch.inference_mode():
        return predictor.model([{"image": tensor, "height": height, "width": width}])[0]


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """Random blobs (a noise image upsampled), so that the random model gives several segments."""
    noise = torch.rand(1, 3, 12, 14, generator=torch.Generator().manual_seed(seed))
    return (F.interpolate(noise, (height, width), mode="bilinear")[0].permute(1, 2, 0) * 255).byte().numpy()


def nearest(labels: np.ndarray, size) -> np.ndarray:
    """PyTorch's nearest-neighbour upsampling at pixel centres, the reference for the written maps."""
    tensor = torch.as_tensor(labels.astype(np.float64))[None, None]
    return F.interpolate(tensor, size, mode="nearest-exact")[0, 0].numpy().astype(labels.dtype)


def test_images_not_downscaled_give_the_files_of_the_full_resolution_path(tmp_path, predictor):
    """40x48 is enlarged to 64x77 and 64x80 kept as it is: outputs at the original size, files unchanged."""
    categories = CategoryIds(predictor.metadata)
    (tmp_path / "in").mkdir()
    (tmp_path / "reference").mkdir()
    for name, size in {"small.png": (40, 48), "exact.png": (64, 80)}.items():
        image = smooth_image(*size, seed=len(name))
        Image.fromarray(image).save(tmp_path / "in" / name)
        assert predictor(image)["panoptic_seg"][0].shape == size
        outputs = full_resolution_outputs(predictor, image)
        np.random.seed(0)  # detectron2's Visualizer jitters the colours of things at random
        Image.fromarray(predictor.visualize(image, outputs, 0.0)).save(tmp_path / "reference" / name)
        write_results(outputs, tmp_path / "reference" / Path(name).stem, Path(name).stem, categories, 0.0)

    for path in sorted((tmp_path / "in").iterdir()):
        np.random.seed(0)
        assert demo.run_on_images(predictor, [path], str(tmp_path / "out"), 0.0) == (1, 0)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "reference").iterdir())
    assert len(written) == 10  # 2 x (visualization, panoptic PNG + JSON, instances JSON, semantic PNG)
    for name in written:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


def test_large_image_results_at_the_original_size_within_a_memory_budget(tmp_path, predictor):
    height, width = LARGE
    image = smooth_image(height, width, seed=7)
    Image.fromarray(image).save(tmp_path / "large.jpg", quality=95)
    Image.fromarray(smooth_image(40, 48, seed=1)).save(tmp_path / "warm.png")
    demo.run_on_images(predictor, [tmp_path / "warm.png"], str(tmp_path / "warm"), 0.0)  # imports, thread pools

    with address_space_budget(BUDGET):
        done, skipped = demo.run_on_images(predictor, [tmp_path / "large.jpg"], str(tmp_path / "out"), 0.0)
    assert (done, skipped) == (1, 0)
    # The old path's outputs at the original size alone exceed the budget. Counted rather than provoked: memory
    # that earlier tests freed stays mapped, so a failure under the cap depends on what ran before in the process.
    old = full_resolution_outputs(predictor, np.asarray(Image.open(tmp_path / "large.jpg")))
    held = old["sem_seg"].nbytes + old["panoptic_seg"][0].nbytes + old["instances"].pred_masks.nbytes
    assert held > BUDGET
    del old

    outputs = predictor(tmp_path / "large.jpg")
    assert predictor.visualize(tmp_path / "large.jpg", outputs).shape == (64, 77, 3)
    out = tmp_path / "out"
    assert np.asarray(Image.open(out / "large.jpg")).shape == (64, 77, 3)  # drawn on what the model saw

    # panoptic: the PNG is the nearest upsampling of the model-resolution ids; areas and boxes are the full map's
    ids = rgb2id(np.asarray(Image.open(out / "large_panoptic.png").convert("RGB")))
    panoptic_seg, segments_info = outputs["panoptic_seg"]
    assert panoptic_seg.shape == (64, 77)
    np.testing.assert_array_equal(ids, nearest(panoptic_seg.numpy(), LARGE))
    annotation = json.loads((out / "large_panoptic.json").read_text())
    assert [s["id"] for s in annotation["segments_info"]] == [s["id"] for s in segments_info]
    assert len(segments_info) > 1
    for segment in annotation["segments_info"]:
        mask = ids == segment["id"]
        assert segment["area"] == mask.sum() > 0
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert segment["bbox"] == list(mask_util.toBbox(rle))

    # instances: each RLE is the nearest upsampling of the instance's mask at the model's resolution
    records = json.loads((out / "large_instances.json").read_text())
    instances = outputs["instances"]
    assert len(records) == len(instances) > 0
    for record, mask, category in zip(records, instances.pred_masks.numpy(), instances.pred_classes.tolist()):
        decoded = mask_util.decode(record["segmentation"])
        np.testing.assert_array_equal(decoded, nearest(mask > 0.5, LARGE))
        assert record["bbox"] == list(mask_util.toBbox(record["segmentation"]))
        assert THING_IDS[record["category_id"]] == category

    # semantic: the nearest upsampling of the argmax labels, as dataset ids
    labels = np.asarray(Image.open(out / "large_sem_seg.png"))
    contiguous_to_dataset = np.array([{c: d for d, c in STUFF_IDS.items()}[c] for c in range(len(STUFF_IDS))])
    expected = contiguous_to_dataset[outputs["sem_seg"].argmax(0).numpy()].astype(np.uint8)
    np.testing.assert_array_equal(labels, nearest(expected, LARGE))


def test_video_larger_than_the_test_size_is_written_at_the_model_resolution(tmp_path, predictor):
    """160x200 frames reach the model as 64x80: the video's frames are drawn (and written) at that size."""
    write_video(tmp_path / "clip.mp4", num_frames=2, size=(200, 160))
    assert predictor.output_size(160, 200) == (64, 80)
    demo.run_on_video(predictor, str(tmp_path / "clip.mp4"), str(tmp_path / "out"), 0.0)
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1].shape)
    assert frames == [(64, 80, 3)] * 2
