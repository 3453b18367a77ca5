"""Dataset mappers on the real formats (COCO panoptic PNG+JSON, COCO instance JSON with RLE and with
polygons, semantic PNGs), generated small: shapes, classes, masks against the annotations, padding
values, the crop's category-area constraint, colour augmentation, LSJ, errors naming corrupt files."""
import copy
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import polygons_to_bitmask
from dinat_m2f.config import get_project_cfg
from dinat_m2f.data import (
    ColorAugSSDTransform,
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    ImageFileError,
    InferenceDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_mapper,
)
from dinat_m2f.data.datasets import SyntheticSpec, register_synthetic
from dinat_m2f.data.datasets.synthetic import SYNTHETIC_CATEGORIES
from log_capture import RecordLogs

PREFIX = "mapper_synthetic"
COLORS = np.array([c["color"] for c in SYNTHETIC_CATEGORIES], np.float32)  # by contiguous id


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    register_synthetic(str(tmp_path_factory.mktemp("datasets")), SyntheticSpec(num_train=6, num_val=2, seed=5), PREFIX)
    return {
        "panoptic": DatasetCatalog.get(f"{PREFIX}_train_panoptic"),
        "instances": DatasetCatalog.get(f"{PREFIX}_train"),
        "semantic": DatasetCatalog.get(f"{PREFIX}_train_sem_seg"),
    }


def make_cfg(mapper_name, train_set, **input_keys):
    cfg = get_project_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    cfg.DATASETS.TRAIN = (f"{PREFIX}_{train_set}",)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.MAX_SIZE_TRAIN = 4096
    for key, value in input_keys.items():
        node, leaf = (cfg.INPUT.CROP, key[5:]) if key.startswith("CROP_") else (cfg.INPUT, key)
        setattr(node, leaf, value)
    return cfg


def short_side(record):
    return min(record["height"], record["width"])


def upsample(array, factor):
    """What a nearest-neighbour resize by an integer factor does to a label map."""
    return np.kron(array, np.ones((factor, factor), dtype=array.dtype))


def read_png(path):
    return np.asarray(Image.open(path))


def panoptic_ids(path):
    from panopticapi.utils import rgb2id

    return rgb2id(np.asarray(Image.open(path), dtype=np.uint32))


def assert_colours_match_classes(image, instances, min_pixels=60):
    """Each mask sits on pixels of its class's colour: image and masks went through the same geometry."""
    pixels = image.permute(1, 2, 0).numpy().astype(np.float32)
    checked = 0
    for label, mask in zip(instances.gt_classes.tolist(), instances.gt_masks.numpy()):
        if mask.sum() >= min_pixels:
            mean = pixels[mask].mean(0)
            assert np.argmin(np.linalg.norm(COLORS - mean, axis=1)) == label
            checked += 1
    assert checked > 0


def test_semantic_mapper_keeps_labels_and_pads(synthetic):
    record = synthetic["semantic"][0]
    cfg = make_cfg("mask_former_semantic", "train_sem_seg", MIN_SIZE_TRAIN=(short_side(record),), SIZE_DIVISIBILITY=64)
    out = build_mapper(cfg, is_train=True)(record)
    h, w = record["height"], record["width"]
    H, W = -(-h // 64) * 64, -(-w // 64) * 64
    gt = read_png(record["sem_seg_file_name"]).astype(np.int64)

    assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (3, H, W)
    assert (out["height"], out["width"], out["file_name"]) == (h, w, record["file_name"])
    sem_seg = out["sem_seg"]
    assert sem_seg.dtype == torch.int64 and tuple(sem_seg.shape) == (H, W)
    assert np.array_equal(sem_seg[:h, :w].numpy(), gt)
    assert (sem_seg[h:] == 255).all() and (sem_seg[:, w:] == 255).all()
    assert (out["image"][:, h:] == 128).all() and (out["image"][:, :, w:] == 128).all()

    instances = out["instances"]
    classes = sorted(set(np.unique(gt).tolist()) - {255})
    assert instances.gt_classes.dtype == torch.int64 and instances.gt_classes.tolist() == classes
    assert instances.gt_masks.dtype == torch.bool and tuple(instances.gt_masks.shape) == (len(classes), H, W)
    for label, mask in zip(classes, instances.gt_masks):
        assert torch.equal(mask, sem_seg == label)


def test_panoptic_mapper_matches_segments_at_double_size(synthetic):
    record = synthetic["panoptic"][1]
    cfg = make_cfg("mask_former_panoptic", "train_panoptic", MIN_SIZE_TRAIN=(2 * short_side(record),))
    out = MaskFormerPanopticDatasetMapper(cfg, True)(record)
    ids = upsample(panoptic_ids(record["pan_seg_file_name"]), 2)
    semantic = upsample(read_png(record["sem_seg_file_name"]).astype(np.int64), 2)

    assert tuple(out["image"].shape) == (3, 2 * record["height"], 2 * record["width"])
    assert np.array_equal(out["sem_seg"].numpy(), semantic)
    segments = record["segments_info"]
    assert out["instances"].gt_classes.tolist() == [s["category_id"] for s in segments]
    for segment, mask in zip(segments, out["instances"].gt_masks):
        assert np.array_equal(mask.numpy(), ids == segment["id"])

    # without a semantic PNG the mapper derives the same semantic map from the panoptic segments
    no_semantic = {k: v for k, v in record.items() if k != "sem_seg_file_name"}
    derived = MaskFormerPanopticDatasetMapper(cfg, True)(no_semantic)
    assert torch.equal(derived["sem_seg"], out["sem_seg"])


def test_instance_mapper_with_rle_masks(synthetic):
    import pycocotools.mask as mask_util

    record = synthetic["instances"][2]
    cfg = make_cfg("mask_former_instance", "train", MIN_SIZE_TRAIN=(short_side(record),), SIZE_DIVISIBILITY=32)
    out = MaskFormerInstanceDatasetMapper(cfg, True)(record)
    h, w = record["height"], record["width"]
    instances = out["instances"]
    assert instances.gt_masks.shape[-2:] == out["image"].shape[-2:] == (-(-h // 32) * 32, -(-w // 32) * 32)
    assert instances.gt_classes.tolist() == [a["category_id"] for a in record["annotations"]]
    for ann, mask in zip(record["annotations"], instances.gt_masks):
        assert np.array_equal(mask[:h, :w].numpy(), mask_util.decode(ann["segmentation"]).astype(bool))
        assert not mask[h:].any() and not mask[:, w:].any()


def test_instance_mappers_with_polygons_and_crowd(synthetic, tmp_path):
    """A COCO instance JSON with polygon segmentations (and one crowd RLE, which is skipped)."""
    from detectron2.data.datasets import load_coco_json

    record = synthetic["instances"][0]
    h, w = record["height"], record["width"]
    polygons = [[[10, 10, 60, 12, 40, 70]], [[70, 20, 110, 20, 110, 60, 70, 60], [5, 90, 30, 90, 30, 110]]]
    crowd = {"size": [h, w], "counts": [0, h * 5, h * w - h * 5]}  # uncompressed RLE, left 5 columns
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "segmentation": polygons[0], "area": 1.0, "bbox": [10, 10, 50, 60], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": polygons[1], "area": 1.0, "bbox": [5, 20, 105, 90], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 2, "segmentation": crowd, "area": h * 5.0, "bbox": [0, 0, 5, h], "iscrowd": 1},
    ]  # fmt: skip
    content = {
        "images": [{"id": 1, "file_name": os.path.basename(record["file_name"]), "height": h, "width": w}],
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in ((1, "circle"), (2, "square"), (3, "triangle"))],
    }
    json_file = tmp_path / "polygons.json"
    json_file.write_text(json.dumps(content))
    (poly_record,) = load_coco_json(str(json_file), os.path.dirname(record["file_name"]))
    for ann in poly_record["annotations"]:
        ann["category_id"] -= 1  # contiguous ids, as the registered loaders produce

    cfg = make_cfg("mask_former_instance", "train", MIN_SIZE_TRAIN=(short_side(record),))
    out = MaskFormerInstanceDatasetMapper(cfg, True)(copy.deepcopy(poly_record))
    assert out["instances"].gt_classes.tolist() == [2, 0]
    for polygon, mask in zip(polygons, out["instances"].gt_masks):
        assert np.array_equal(mask.numpy(), polygons_to_bitmask([np.array(p, float) for p in polygon], h, w))

    cfg = make_cfg("coco_instance_lsj", "train", IMAGE_SIZE=2 * max(h, w), MIN_SCALE=1.0, MAX_SCALE=1.0)
    out = COCOInstanceLSJDatasetMapper(cfg, True)(copy.deepcopy(poly_record))
    scale = 2.0  # ResizeScale fits the image into IMAGE_SIZE x IMAGE_SIZE: twice its longer side
    assert out["instances"].gt_classes.tolist() == [2, 0]
    boxes = out["instances"].gt_boxes.tensor
    assert torch.allclose(boxes[0], torch.tensor([10, 10, 61, 71], dtype=torch.float32) * scale, atol=2 * scale)


def test_crop_keeps_category_area_under_the_limit(tmp_path):
    """64x64 labels, class 0 on the left half, class 1 on the right, a 255 stripe: with the constraint
    every 32x32 crop has no category above 90% of its labelled pixels; without it some do."""
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 32:] = 1
    labels[:4] = 255  # ignored pixels do not count
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 200
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(labels).save(tmp_path / "labels.png")
    record = {"file_name": str(tmp_path / "image.png"), "sem_seg_file_name": str(tmp_path / "labels.png")}

    def max_fraction(constraint, seed):
        np.random.seed(seed)
        cfg = make_cfg("mask_former_semantic", "train_sem_seg", MIN_SIZE_TRAIN=(64,), CROP_ENABLED=True,
                       CROP_TYPE="absolute", CROP_SIZE=(32, 32), CROP_SINGLE_CATEGORY_MAX_AREA=constraint)  # fmt: skip
        out = MaskFormerSemanticDatasetMapper(cfg, True)(record)
        sem_seg = out["sem_seg"]
        assert tuple(sem_seg.shape) == (32, 32)
        counts = torch.bincount(sem_seg[sem_seg != 255], minlength=2)
        # image and labels were cropped together
        assert torch.equal(out["image"][0] == 200, sem_seg == 1) or (sem_seg == 255).any()
        return counts.max().item() / counts.sum().item()

    constrained = [max_fraction(0.9, seed) for seed in range(30)]
    unconstrained = [max_fraction(1.0, seed) for seed in range(30)]
    assert max(constrained) < 0.9
    assert max(unconstrained) == 1.0  # the constraint is what keeps them mixed


@pytest.mark.parametrize(
    "mapper_name, train_set", [("mask_former_semantic", "train_sem_seg"), ("mask_former_panoptic", "train_panoptic"),
                               ("mask_former_instance", "train")]  # fmt: skip
)
def test_augmented_outputs_stay_aligned(synthetic, mapper_name, train_set):
    """Random resize, crop (category-area constraint where labels exist), flip and padding move image,
    labels and masks together."""
    key = {"train_sem_seg": "semantic", "train_panoptic": "panoptic", "train": "instances"}[train_set]
    cfg = make_cfg(mapper_name, train_set, MIN_SIZE_TRAIN=(128, 160, 192), MIN_SIZE_TRAIN_SAMPLING="choice",
                   RANDOM_FLIP="horizontal", CROP_ENABLED=True, CROP_TYPE="absolute", CROP_SIZE=(100, 100),
                   CROP_SINGLE_CATEGORY_MAX_AREA=0.8, SIZE_DIVISIBILITY=64)  # fmt: skip
    mapper = build_mapper(cfg, is_train=True)
    np.random.seed(0)
    for record in synthetic[key][:4]:
        out = mapper(record)
        assert tuple(out["image"].shape) == (3, 128, 128)
        assert (out["image"][:, 100:] == 128).all() and (out["image"][:, :, 100:] == 128).all()
        instances = out["instances"]
        assert tuple(instances.gt_masks.shape[1:]) == (128, 128) and not instances.gt_masks[:, 100:].any()
        assert bool(instances.gt_masks.flatten(1).any(1).all())  # cropped-away segments are dropped
        assert_colours_match_classes(out["image"], instances)
        if "sem_seg" in out:
            assert (out["sem_seg"][100:] == 255).all()
            for label, mask in zip(instances.gt_classes, instances.gt_masks):
                assert (out["sem_seg"][mask] == label).all()


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_lsj_mappers(synthetic, scale):
    size = 160
    for mapper_name, key, train_set in (("coco_panoptic_lsj", "panoptic", "train_panoptic"), ("coco_instance_lsj", "instances", "train")):
        cfg = make_cfg(mapper_name, train_set, IMAGE_SIZE=size, MIN_SCALE=scale, MAX_SCALE=scale, RANDOM_FLIP="horizontal")
        mapper = build_mapper(cfg, is_train=True)
        assert isinstance(mapper, COCOPanopticLSJDatasetMapper if key == "panoptic" else COCOInstanceLSJDatasetMapper)
        np.random.seed(1)
        for record in synthetic[key][:3]:
            out = mapper(record)
            image, padding, instances = out["image"], out["padding_mask"], out["instances"]
            assert tuple(image.shape) == (3, size, size) and tuple(padding.shape) == (size, size)
            h, w = record["height"], record["width"]
            fitted = np.round(np.multiply((h, w), min(size * scale / h, size * scale / w))).astype(int)
            expected_padding = torch.ones(size, size, dtype=torch.bool)
            expected_padding[: fitted[0], : fitted[1]] = False
            assert torch.equal(padding, expected_padding)
            assert (image[:, padding] == 128).all()
            assert not instances.gt_masks[:, padding].any()
            assert_colours_match_classes(image, instances, min_pixels=120)
            boxes = instances.gt_boxes.tensor
            for box, mask in zip(boxes, instances.gt_masks):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            if key == "panoptic" and scale == 0.5:  # nothing cropped: one mask per segment
                assert instances.gt_classes.tolist() == [s["category_id"] for s in record["segments_info"]]


def test_color_aug_ssd_changes_colours_only():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (24, 32), dtype=np.uint8)
    transform = ColorAugSSDTransform(img_format="RGB")
    changed = False
    for seed in range(8):
        np.random.seed(seed)
        out_rgb = transform.apply_image(image)
        np.random.seed(seed)
        out_bgr = ColorAugSSDTransform(img_format="BGR").apply_image(np.ascontiguousarray(image[:, :, ::-1]))
        assert out_rgb.shape == image.shape and out_rgb.dtype == np.uint8
        assert np.array_equal(out_rgb, out_bgr[:, :, ::-1])  # same distortion whatever the channel order
        changed |= not np.array_equal(out_rgb, image)
    assert changed
    assert np.array_equal(transform.apply_segmentation(labels), labels)
    coords = np.array([[1.5, 2.0]])
    assert np.array_equal(transform.apply_coords(coords), coords)
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        ColorAugSSDTransform(img_format="YUV-BT.601")


def test_color_aug_in_the_mapper_keeps_labels(synthetic):
    record = synthetic["semantic"][0]
    base = make_cfg("mask_former_semantic", "train_sem_seg", MIN_SIZE_TRAIN=(short_side(record),))
    with_aug = make_cfg("mask_former_semantic", "train_sem_seg", MIN_SIZE_TRAIN=(short_side(record),), COLOR_AUG_SSD=True)
    plain = build_mapper(base, True)(record)
    different = False
    for seed in range(4):
        np.random.seed(seed)
        out = build_mapper(with_aug, True)(record)
        assert torch.equal(out["sem_seg"], plain["sem_seg"])
        different |= not torch.equal(out["image"], plain["image"])
    assert different


def test_corrupt_or_missing_images_name_the_file(synthetic, tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(synthetic["panoptic"][0]["file_name"], "rb").read()[:300])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    cases = [
        (make_cfg("mask_former_semantic", "train_sem_seg"), synthetic["semantic"][0]),
        (make_cfg("mask_former_panoptic", "train_panoptic"), synthetic["panoptic"][0]),
        (make_cfg("mask_former_instance", "train"), synthetic["instances"][0]),
        (make_cfg("coco_instance_lsj", "train", IMAGE_SIZE=64), synthetic["instances"][0]),
        (make_cfg("coco_panoptic_lsj", "train_panoptic", IMAGE_SIZE=64), synthetic["panoptic"][0]),
    ]
    for cfg, record in cases:
        for bad in (truncated, garbage, tmp_path / "missing.jpg"):
            broken = dict(record, file_name=str(bad))
            broken.pop("height"), broken.pop("width")
            for mapper in (build_mapper(cfg, True), build_mapper(cfg, False)):
                with pytest.raises(ImageFileError, match=str(bad)):
                    mapper(broken)
    # a corrupt label file is named too
    broken = dict(synthetic["semantic"][0], sem_seg_file_name=str(garbage))
    with pytest.raises(ImageFileError, match=str(garbage)):
        build_mapper(make_cfg("mask_former_semantic", "train_sem_seg"), True)(broken)


@pytest.mark.parametrize("orientation", [3, 6], ids=["rotate_180", "rotate_90"])
def test_exif_orientation_never_misaligns_image_and_labels(tmp_path, orientation):
    """A JPEG whose EXIF tag says "show rotated" and its label PNG, both in the stored layout: the mappers
    keep them aligned (detectron2's read_image rotated the image only: 180 degrees silently misaligned,
    90 degrees failed the size check) and warn naming the file."""
    height, width = 32, 48
    labels = np.zeros((height, width), np.uint8)
    labels[: height // 2, : width // 3] = 1  # class 1 in the top-left block of the stored pixels
    pixels = np.where(labels[..., None] == 1, 250, 5).astype(np.uint8).repeat(3, axis=2)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    Image.fromarray(labels).save(tmp_path / "photo.png")
    record = {"file_name": str(tmp_path / "photo.jpg"), "sem_seg_file_name": str(tmp_path / "photo.png"),
              "height": height, "width": width, "image_id": 0}  # fmt: skip
    cfg = make_cfg("mask_former_semantic", "train_sem_seg", MIN_SIZE_TRAIN=(height,), MIN_SIZE_TEST=height)

    with RecordLogs(logging.getLogger("dinat_m2f.data.image_files")) as logs:
        train = build_mapper(cfg, True)(dict(record))
        test = build_mapper(cfg, False)(dict(record))
    bright = train["image"][0] > 128
    assert torch.equal(bright, train["sem_seg"] == 1)
    assert torch.equal(test["image"][0] > 128, torch.as_tensor(labels == 1))
    assert any(str(tmp_path / "photo.jpg") in m and f"EXIF orientation {orientation}" in m for m in logs.messages)


def test_build_mapper_by_name_and_inference_mapper(synthetic):
    expected = {
        "mask_former_semantic": MaskFormerSemanticDatasetMapper,
        "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
        "mask_former_instance": MaskFormerInstanceDatasetMapper,
        "coco_instance_lsj": COCOInstanceLSJDatasetMapper,
        "coco_panoptic_lsj": COCOPanopticLSJDatasetMapper,
    }
    for name, mapper_class in expected.items():
        assert type(build_mapper(make_cfg(name, "train_panoptic"), True)) is mapper_class
    with pytest.raises(ValueError, match="mask_former_panoptic"):
        build_mapper(make_cfg("mask_former_unknown", "train_panoptic"), True)

    cfg = make_cfg("mask_former_panoptic", "train_panoptic")
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 1000
    mapper = build_mapper(cfg, False)
    assert isinstance(mapper, InferenceDatasetMapper)
    record = synthetic["instances"][0]
    out = mapper(record)
    h, w = record["height"], record["width"]
    assert (out["height"], out["width"]) == (h, w) and "annotations" not in out
    assert min(out["image"].shape[1:]) == 96
    assert abs(max(out["image"].shape[1:]) - 96 * max(h, w) / min(h, w)) <= 1
    assert MetadataCatalog.get(f"{PREFIX}_train").evaluator_type == "coco"


PANOPTIC_MAPPERS = [("mask_former_panoptic", {}), ("coco_panoptic_lsj", {"IMAGE_SIZE": 64})]


@pytest.mark.parametrize("mapper_name, input_keys", PANOPTIC_MAPPERS)
def test_panoptic_png_of_another_size_or_16_bits_is_named(synthetic, tmp_path, mapper_name, input_keys):
    """Was a bare AssertionError (another size) or a sample with no segment at all (16 bits)."""
    record = synthetic["panoptic"][0]
    pixels = read_png(record["pan_seg_file_name"])
    Image.fromarray(pixels[:-3]).save(tmp_path / "short.png")
    Image.fromarray(panoptic_ids(record["pan_seg_file_name"]).astype(np.uint16)).save(tmp_path / "ids16.png")
    mapper = build_mapper(make_cfg(mapper_name, "train_panoptic", **input_keys), True)
    h, w = record["height"], record["width"]
    with pytest.raises(ImageFileError, match=f"short.png is {w}x{h - 3} .* but its image {record['file_name']} is {w}x{h}"):
        mapper(dict(record, pan_seg_file_name=str(tmp_path / "short.png")))
    with pytest.raises(ImageFileError, match="ids16.png is 16-bit"):
        mapper(dict(record, pan_seg_file_name=str(tmp_path / "ids16.png")))


def test_segments_absent_from_the_panoptic_png_are_named_in_a_warning(synthetic):
    record = copy.deepcopy(synthetic["panoptic"][0])
    record["segments_info"].append({"id": 987654, "category_id": 0, "iscrowd": 0, "isthing": True})
    with RecordLogs(logging.getLogger("dinat_m2f.data.dataset_mappers.mapper_utils")) as logs:
        out = build_mapper(make_cfg("mask_former_panoptic", "train_panoptic"), True)(record)
    assert len(out["instances"]) == len(record["segments_info"]) - 1
    assert any(record["pan_seg_file_name"] in m and "[987654] are absent" in m for m in logs.messages)


@pytest.mark.parametrize("train_set, mapper_name", [("train_sem_seg", "mask_former_semantic"),
                                                    ("train_panoptic", "mask_former_panoptic")])
def test_label_above_the_class_count_is_named(synthetic, tmp_path, train_set, mapper_name):
    """Not a class and not the ignore label: was a reshape error at evaluation, an index error in the loss."""
    record = synthetic["panoptic"][0]
    labels = read_png(record["sem_seg_file_name"]).copy()
    labels[0, :3] = 9
    Image.fromarray(labels).save(tmp_path / "labels.png")
    cfg = make_cfg(mapper_name, train_set)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    broken = dict(record, sem_seg_file_name=str(tmp_path / "labels.png"))
    with pytest.raises(ImageFileError, match=r"labels.png has values \[9\], which are neither a class \(0..4\)"):
        build_mapper(cfg, True)(broken)
    Image.fromarray(read_png(record["sem_seg_file_name"])[:-1]).save(tmp_path / "short.png")
    with pytest.raises(ImageFileError, match="short.png is .* but its image"):
        build_mapper(cfg, True)(dict(record, sem_seg_file_name=str(tmp_path / "short.png")))


def test_decompression_bomb_in_training_names_the_file(synthetic, tmp_path):
    from test_image_files import write_decompression_bomb

    write_decompression_bomb(tmp_path / "bomb.jpg")
    record = dict(synthetic["semantic"][0], file_name=str(tmp_path / "bomb.jpg"))
    with pytest.raises(ImageFileError, match="bomb.jpg.*decompression bomb"):
        build_mapper(make_cfg("mask_former_semantic", "train_sem_seg"), True)(record)
