"""dinat_m2f.Predictor: paths, PIL images, RGB and BGR arrays and lists of them give the same outputs; outputs at
the image's size (the resized size for images larger than the test size); only the asked tasks; visualization in
RGB; class names; the model zoo entry point; clear errors for bad input.

The model is the synthetic panoptic config with random seeded weights (saved to a .pth and loaded through
MODEL.WEIGHTS) and lowered panoptic thresholds, so that it returns segments and instances."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from dinat_m2f import Predictor, model_zoo

SYNTHETIC = "synthetic/panoptic/dinat_mini"
TEST_SIZE = (64, 96)  # INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    cfg = model_zoo.get_config(SYNTHETIC)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random_init.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return str(path)


def synthetic_cfg(weights: str):
    cfg = model_zoo.get_config(SYNTHETIC)
    cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = weights, "cpu"
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = TEST_SIZE
    return cfg


@pytest.fixture(scope="module")
def predictor(weights):
    return Predictor(synthetic_cfg(weights))


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """Random blobs (noise upsampled), so that the random model gives several segments."""
    noise = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(seed))
    return (F.interpolate(noise, (height, width), mode="bilinear")[0].permute(1, 2, 0) * 255).byte().numpy()


def assert_same_outputs(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    if "panoptic_seg" in expected:
        assert torch.equal(actual["panoptic_seg"][0], expected["panoptic_seg"][0])
        assert actual["panoptic_seg"][1] == expected["panoptic_seg"][1]
    if "instances" in expected:
        assert torch.equal(actual["instances"].pred_masks, expected["instances"].pred_masks)
        assert torch.equal(actual["instances"].scores, expected["instances"].scores)
    if "sem_seg" in expected:
        assert torch.equal(actual["sem_seg"], expected["sem_seg"])


def test_paths_pil_images_arrays_and_lists_give_the_same_outputs(tmp_path, predictor):
    image = smooth_image(40, 56, seed=1)
    Image.fromarray(image).save(tmp_path / "photo.png")
    expected = predictor(image)
    assert expected["panoptic_seg"][0].shape == (40, 56)  # enlarged for the model, outputs at the image's size
    assert expected["sem_seg"].shape == (5, 40, 56) and expected["instances"].image_size == (40, 56)
    assert len(expected["panoptic_seg"][1]) > 1 and len(expected["instances"]) > 0
    for same in (tmp_path / "photo.png", str(tmp_path / "photo.png"), Image.fromarray(image),
                 Image.fromarray(image).convert("RGBA")):
        assert_same_outputs(predictor(same), expected)
    assert_same_outputs(predictor(image[:, :, ::-1].copy(), format="BGR"), expected)

    other = smooth_image(50, 30, seed=2)
    outputs = predictor([tmp_path / "photo.png", Image.fromarray(other), image])
    assert isinstance(outputs, list) and len(outputs) == 3
    assert_same_outputs(outputs[0], expected)
    assert_same_outputs(outputs[1], predictor(other))
    assert_same_outputs(outputs[2], expected)


def test_a_large_image_keeps_its_outputs_at_the_test_size(predictor):
    image = smooth_image(640, 960, seed=3)
    assert predictor.output_size(640, 960) == TEST_SIZE
    outputs = predictor(image)
    assert outputs["panoptic_seg"][0].shape == TEST_SIZE and outputs["sem_seg"].shape[1:] == TEST_SIZE
    vis = predictor.visualize(image, outputs)
    assert vis.shape == (*TEST_SIZE, 3) and vis.dtype == np.uint8
    with pytest.raises(ValueError, match="outputs are for an image of 64x96, not for this 40x56 image"):
        predictor.visualize(smooth_image(40, 56, seed=1), outputs)


def test_visualize_returns_rgb_as_detectron2_draws_it(tmp_path, predictor):
    image = smooth_image(40, 56, seed=1)
    outputs = predictor(image)
    np.random.seed(0)  # detectron2's Visualizer jitters the colours of things at random
    vis = predictor.visualize(image, outputs)
    np.random.seed(0)
    panoptic_seg, segments_info = outputs["panoptic_seg"]
    expected = Visualizer(image, predictor.metadata).draw_panoptic_seg(panoptic_seg, segments_info).get_image()
    np.testing.assert_array_equal(vis, expected)
    np.random.seed(0)
    np.testing.assert_array_equal(predictor.visualize(image[:, :, ::-1].copy(), outputs, format="BGR"), vis)
    # nothing to draw: the image itself, in RGB
    red = np.zeros((40, 56, 3), dtype=np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    void = {"panoptic_seg": (torch.zeros(40, 56, dtype=torch.int32), [])}
    np.testing.assert_array_equal(predictor.visualize(tmp_path / "red.png", void), red)


def test_only_the_asked_tasks_are_computed(weights, predictor):
    image = smooth_image(40, 56, seed=1)
    everything = predictor(image)
    assert predictor.tasks == ("panoptic", "instance", "semantic")
    for tasks in [("panoptic",), ("instance", "semantic")]:
        narrowed = Predictor(synthetic_cfg(weights), tasks=tasks)
        assert narrowed.tasks == tasks
        outputs = narrowed(image)
        key = {"panoptic": "panoptic_seg", "instance": "instances", "semantic": "sem_seg"}
        assert_same_outputs(outputs, {key[task]: everything[key[task]] for task in tasks})
    vis = Predictor(synthetic_cfg(weights), tasks=("semantic",)).visualize(image, {"sem_seg": everything["sem_seg"]})
    assert vis.shape == (40, 56, 3)


def test_class_names_are_those_of_the_model_classes(predictor):
    assert predictor.class_names == ["circle", "square", "triangle", "sky", "grass"]
    assert len(predictor.class_names) == predictor.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES


def test_from_zoo(weights):
    predictor = Predictor.from_zoo(SYNTHETIC, weights=weights, device="cpu", tasks=["semantic"])
    loaded = torch.load(weights, weights_only=True)["model"]
    assert all(torch.equal(value, loaded[key]) for key, value in predictor.model.state_dict().items())
    assert predictor.tasks == ("semantic",) and predictor.cfg.MODEL.DEVICE == "cpu"
    with pytest.raises(ValueError, match="coco/semantic/dinat_l has no released checkpoint"):
        Predictor.from_zoo("coco/semantic/dinat_l")
    with pytest.raises(ValueError, match=r"tasks \('panoptic',\): this model computes semantic"):
        Predictor.from_zoo("ade20k/semantic/swin_l", weights="no_such_file.pkl", tasks=("panoptic",))  # nothing read


@pytest.mark.parametrize("image, error, match", [
    (np.zeros((8, 8), dtype=np.uint8), ValueError, r"\(H, W, 3\) uint8.*shape \(8, 8\)"),
    (np.zeros((8, 8, 4), dtype=np.uint8), ValueError, r"shape \(8, 8, 4\)"),
    (np.zeros((8, 8, 3), dtype=np.float32), ValueError, "dtype float32"),
    (torch.zeros(3, 8, 8), TypeError, "path, a PIL image or a numpy array, got Tensor"),
])  # fmt: skip
def test_bad_images_are_named(predictor, image, error, match):
    with pytest.raises(error, match=match):
        predictor(image)


def test_a_missing_file_a_folder_and_a_wrong_format_are_named(tmp_path, predictor):
    with pytest.raises(OSError, match="nothing.png"):
        predictor(tmp_path / "nothing.png")
    with pytest.raises(ValueError, match="is a folder; only regular files are read"):
        predictor(tmp_path)
    with pytest.raises(ValueError, match="format must be one of RGB, BGR, got 'RGBA'"):
        predictor(np.zeros((8, 8, 3), dtype=np.uint8), format="RGBA")


def test_things_of_ade20k_panoptic_are_drawn_under_their_own_names():
    """ADE20K panoptic keeps each class at its 150-class index, things among stuff (e.g. a thing at index 149),
    while its metadata lists only the things: drawn with the metadata as registered, detectron2's Visualizer
    indexes that list by the class index (a wrong name, or an IndexError above 99)."""
    from detectron2.data import MetadataCatalog

    from dinat_m2f.predictor import drawing_metadata, draw_outputs

    metadata = MetadataCatalog.get("ade20k_panoptic_val")
    index_of = metadata.thing_dataset_id_to_contiguous_id
    last_thing = max(index_of.values())
    assert last_thing >= len(metadata.thing_classes)  # the case: an index beyond the things' list
    drawn = drawing_metadata(metadata)
    for dataset_id, index in index_of.items():
        assert drawn.thing_classes[index] == metadata.stuff_classes[index], dataset_id
    image = np.zeros((32, 32, 3), np.uint8)
    panoptic = torch.zeros(32, 32, dtype=torch.int32)
    panoptic[8:24, 8:24] = 1
    segments = [{"id": 1, "category_id": last_thing, "isthing": True, "score": 0.9}]
    with pytest.raises(IndexError):
        Visualizer(image, metadata).draw_panoptic_seg(panoptic, segments)
    assert draw_outputs(image, {"panoptic_seg": (panoptic, segments)}, metadata, 0.5).shape == (32, 32, 3)
    synthetic = MetadataCatalog.get("synthetic_val_panoptic")  # things first: drawn with its own metadata
    assert synthetic.thing_classes
    assert drawing_metadata(synthetic) is synthetic
