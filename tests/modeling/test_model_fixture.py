"""The Mask2Former-DiNAT model against the original implementation's numbers
(tests/fixtures/m2f_dinat_reference.pt: a small model run by the original code)."""
import pytest
import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

import dinat_m2f.modeling.backbone.dinat  # noqa: F401  (registers D2DiNAT)
from dinat_m2f.config import get_project_cfg
from dinat_m2f.maskformer_model import MaskFormer
from dinat_m2f.modeling.meta_arch.mask_former_head import MaskFormerHead

FIXTURE_DATASET = "m2f_fixture_reference"
LOGIT_TOL = 1e-3  # tests/fixtures/README.md: features and logits
SCORE_TOL = 1e-4  # instance scores


def fixture_cfg(reference: dict) -> CfgNode:
    """The project's defaults with the fixture's MODEL keys (its yaml also holds keys of other detectron2
    versions outside MODEL, which are not ours to merge)."""
    cfg = get_project_cfg()
    cfg.MODEL.merge_from_other_cfg(CfgNode(yaml.safe_load(reference["full_config_yaml"])["MODEL"]))
    MetadataCatalog.get(FIXTURE_DATASET).set(**reference["metadata"])
    cfg.DATASETS.TRAIN = (FIXTURE_DATASET,)
    cfg.DATASETS.TEST = (FIXTURE_DATASET,)
    cfg.TEST.DETECTIONS_PER_IMAGE = reference["config"]["TEST.DETECTIONS_PER_IMAGE"]
    return cfg


@pytest.fixture(scope="module")
def reference_model(m2f_reference):
    model = build_model(fixture_cfg(m2f_reference)).eval()
    model.load_state_dict(m2f_reference["state_dict"], strict=True)
    return model


@pytest.fixture(scope="module")
def reference_outputs(reference_model, m2f_reference):
    """Backbone features, head outputs and the three inference results for the fixture's image."""
    image = m2f_reference["image"]
    with torch.no_grad():
        normalized = ((image.float() - reference_model.pixel_mean) / reference_model.pixel_std)[None]
        features = reference_model.backbone(normalized)
        head = reference_model.sem_seg_head(features)
        result = reference_model(
            [{"image": image, "height": m2f_reference["height"], "width": m2f_reference["width"]}]
        )[0]
    return features, head, result


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _check_head_outputs(out: dict, reference: dict) -> None:
    assert _max_err(out["pred_logits"], reference["pred_logits"]) < LOGIT_TOL
    assert _max_err(out["pred_masks"], reference["pred_masks"]) < LOGIT_TOL
    assert len(out["aux_outputs"]) == len(reference["aux_pred_logits"])
    for aux, ref_logits, ref_masks in zip(
        out["aux_outputs"], reference["aux_pred_logits"], reference["aux_pred_masks"]
    ):
        assert _max_err(aux["pred_logits"], ref_logits) < LOGIT_TOL
        assert _max_err(aux["pred_masks"], ref_masks) < LOGIT_TOL


def test_head_reproduces_fixture_from_backbone_features(m2f_reference):
    """Pixel decoder + transformer decoder alone, fed the original backbone's features."""
    cfg = fixture_cfg(m2f_reference)
    features = m2f_reference["backbone_features"]
    input_shape = {
        name: ShapeSpec(channels=f.shape[1], stride=4 * 2**level) for level, (name, f) in enumerate(features.items())
    }
    head = MaskFormerHead(cfg, input_shape).eval()
    prefix = "sem_seg_head."
    head.load_state_dict(
        {k[len(prefix):]: v for k, v in m2f_reference["state_dict"].items() if k.startswith(prefix)}, strict=True
    )
    with torch.no_grad():
        _check_head_outputs(head(features), m2f_reference)


def test_state_dict_names_and_shapes_are_the_originals(reference_model, m2f_reference):
    """A plain dict of tensors (no version metadata) loads strictly; names and shapes match one to one."""
    ours = reference_model.state_dict()
    theirs = m2f_reference["state_dict"]
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)
    assert isinstance(reference_model, MaskFormer)


def test_backbone_features_match(reference_outputs, m2f_reference):
    features, _, _ = reference_outputs
    assert sorted(features) == sorted(m2f_reference["backbone_features"])
    for name, ref in m2f_reference["backbone_features"].items():
        assert _max_err(features[name], ref) < LOGIT_TOL, name


def test_head_outputs_match(reference_outputs, m2f_reference):
    _, head, _ = reference_outputs
    _check_head_outputs(head, m2f_reference)


def test_semantic_result_matches(reference_outputs, m2f_reference):
    _, _, result = reference_outputs
    assert _max_err(result["sem_seg"], m2f_reference["sem_seg"]) < LOGIT_TOL


def test_panoptic_result_matches(reference_outputs, m2f_reference):
    _, _, result = reference_outputs
    panoptic_seg, segments_info = result["panoptic_seg"]
    assert panoptic_seg.dtype == torch.int32
    assert torch.equal(panoptic_seg, m2f_reference["panoptic_seg"])
    assert segments_info == m2f_reference["segments_info"]


def test_instance_result_matches_as_a_set(reference_outputs, m2f_reference):
    """Instances come from an unsorted top-k: pair each reference instance with an unused prediction of the
    same class, the same mask and the same score."""
    _, _, result = reference_outputs
    instances = result["instances"]
    ref_masks = m2f_reference["instance_masks"]
    assert len(instances) == len(ref_masks)
    assert tuple(instances.image_size) == tuple(ref_masks.shape[-2:])
    unused = set(range(len(instances)))
    for ref_mask, ref_score, ref_class in zip(
        ref_masks, m2f_reference["instance_scores"], m2f_reference["instance_classes"]
    ):
        match = next(
            (
                i
                for i in sorted(unused)
                if instances.pred_classes[i] == ref_class
                # pixels whose logit is within rounding of 0 may flip
                and (instances.pred_masks[i] != ref_mask).float().mean() < 1e-3
                and abs(instances.scores[i].item() - ref_score.item()) < SCORE_TOL
            ),
            None,
        )
        assert match is not None, f"no prediction matches reference instance (class {ref_class}, score {ref_score})"
        unused.remove(match)


# Inference rules the fixture's image does not exercise, on the fixture's model.


def test_outputs_are_resized_to_the_requested_size(reference_model, m2f_reference):
    image = m2f_reference["image"][:, :150, :170]  # not a multiple of 32: padded inside the model
    with torch.no_grad():
        result = reference_model([{"image": image, "height": 300, "width": 340}])[0]
    num_classes = reference_model.sem_seg_head.num_classes
    assert result["sem_seg"].shape == (num_classes, 300, 340)
    assert result["panoptic_seg"][0].shape == (300, 340)
    assert tuple(result["instances"].image_size) == (300, 340)
    assert result["instances"].pred_masks.shape[-2:] == (300, 340)


def _one_hot_logits(classes, num_classes: int, confidence: float = 10.0) -> torch.Tensor:
    logits = torch.zeros(len(classes), num_classes + 1)
    for q, c in enumerate(classes):
        logits[q, c] = confidence
    return logits


def test_panoptic_merges_stuff_of_one_class_and_keeps_things_apart(reference_model):
    """Fixture metadata: classes 0-2 are things, 3-4 stuff. Two queries of stuff class 3 become one segment,
    two of thing class 1 stay two segments, a no-object query is dropped."""
    h, w = 8, 8
    masks = torch.full((5, h, w), -10.0)
    masks[0, :4, :4] = 10  # stuff 3
    masks[1, :4, 4:] = 10  # stuff 3 again
    masks[2, 4:, :4] = 10  # thing 1
    masks[3, 4:, 4:] = 10  # thing 1
    masks[4] = 10  # no-object
    num_classes = reference_model.sem_seg_head.num_classes
    logits = _one_hot_logits([3, 3, 1, 1, num_classes], num_classes)
    panoptic_seg, segments_info = reference_model.postprocessor.panoptic_inference(logits, masks)
    assert segments_info == [
        {"id": 1, "isthing": False, "category_id": 3},
        {"id": 2, "isthing": True, "category_id": 1},
        {"id": 3, "isthing": True, "category_id": 1},
    ]
    assert (panoptic_seg[:4] == 1).all()
    assert (panoptic_seg[4:, :4] == 2).all() and (panoptic_seg[4:, 4:] == 3).all()


def test_panoptic_drops_low_scores_and_mostly_covered_segments(reference_model, monkeypatch):
    monkeypatch.setattr(reference_model.postprocessor, "object_mask_threshold", 0.5)
    h, w = 8, 8
    masks = torch.full((3, h, w), -10.0)
    masks[0, :, 1:] = 10  # class 0, confident, everything but column 0
    masks[1, :2, :4] = 10  # class 2, less confident: keeps only 2 of its 8 pixels (< OVERLAP_THRESHOLD 0.3)
    masks[2, 4:] = 10  # class 4 with a score (1/6) under the object-mask threshold
    num_classes = reference_model.sem_seg_head.num_classes
    logits = _one_hot_logits([0, 2, 4], num_classes)
    logits[1, 2] = 5.0
    logits[2] = 0.0
    assert reference_model.postprocessor.overlap_threshold == 0.3
    panoptic_seg, segments_info = reference_model.postprocessor.panoptic_inference(logits, masks)
    assert segments_info == [{"id": 1, "isthing": True, "category_id": 0}]
    assert (panoptic_seg[:, 1:] == 1).all() and (panoptic_seg[:, 0] == 0).all()


def test_empty_panoptic_result_is_all_void(reference_model):
    num_classes = reference_model.sem_seg_head.num_classes
    logits = _one_hot_logits([num_classes] * 3, num_classes)
    panoptic_seg, segments_info = reference_model.postprocessor.panoptic_inference(logits, torch.zeros(3, 4, 4))
    assert segments_info == [] and (panoptic_seg == 0).all()


def test_instances_keep_only_things_when_panoptic_is_on(reference_model):
    num_classes = reference_model.sem_seg_head.num_classes
    logits = _one_hot_logits([0, 3, 1, 4], num_classes)
    masks = torch.full((4, 6, 6), -5.0)
    masks[:, :3] = 5.0
    instances = reference_model.postprocessor.instance_inference(logits, masks)
    things = set(reference_model.postprocessor.metadata.thing_dataset_id_to_contiguous_id.values())
    assert len(instances) > 0
    assert set(instances.pred_classes.tolist()) <= things
    assert {0, 1} <= set(instances.pred_classes.tolist())
    assert instances.pred_boxes.tensor.shape == (len(instances), 4)


def test_semantic_only_model_postprocesses_after_inference(reference_model, m2f_reference, monkeypatch):
    """With panoptic and instance off, semantic inference runs at the padded size and is resized after; for
    the fixture's image (already a multiple of 32, output at its own size) the result is the same."""
    monkeypatch.setattr(reference_model.postprocessor, "panoptic_on", False)
    monkeypatch.setattr(reference_model.postprocessor, "instance_on", False)
    monkeypatch.setattr(reference_model.postprocessor, "sem_seg_postprocess_before_inference", False)
    image = m2f_reference["image"]
    with torch.no_grad():
        result = reference_model([{"image": image}])[0]
        resized = reference_model([{"image": image[:, :150, :170], "height": 75, "width": 85}])[0]
    assert sorted(result) == ["sem_seg"]
    assert _max_err(result["sem_seg"], m2f_reference["sem_seg"]) < LOGIT_TOL
    assert resized["sem_seg"].shape == (reference_model.sem_seg_head.num_classes, 75, 85)
