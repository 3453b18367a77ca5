"""MaskFormerPostProcessor against the straightforward computation (every query's mask upsampled to the output
size, then semantic / panoptic / instance inference on the (Q, H, W) masks, as Mask2Former does), on random
outputs; and its memory: no (Q, H, W) tensor at the output size."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.data.catalog import Metadata
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks
from memory_limit import address_space_budget

from dinat_m2f.modeling import postprocessing
from dinat_m2f.modeling.postprocessing import MaskFormerPostProcessor

NUM_CLASSES = 5
THINGS = {1: 0, 2: 1, 3: 2}  # classes 0-2 are things, 3-4 stuff
SEMANTIC_TOL = 1e-5  # summing the queries chunk by chunk changes the rounding only
SCORE_TOL = 1e-5


def _postprocessor(semantic=True, panoptic=True, instance=True, topk=20, num_classes=NUM_CLASSES):
    metadata = Metadata(name="postprocessing_test", thing_dataset_id_to_contiguous_id=THINGS)
    return MaskFormerPostProcessor(
        num_classes=num_classes, metadata=metadata, object_mask_threshold=0.5, overlap_threshold=0.3,
        sem_seg_postprocess_before_inference=True, semantic_on=semantic, panoptic_on=panoptic,
        instance_on=instance, test_topk_per_image=topk)


def _random_outputs(num_queries, mask_size, seed, num_classes=NUM_CLASSES):
    """Logits with about half the queries confident (so panoptic keeps some), masks of smooth blobs, and the
    first query repeated as the last (exact ties in the panoptic argmax)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_queries, num_classes + 1, generator=generator)
    confident = torch.rand(num_queries, generator=generator) < 0.5
    classes = torch.randint(0, num_classes, (num_queries,), generator=generator)
    logits[confident, classes[confident]] += 6.0
    coarse = torch.randn(num_queries, 1, (mask_size[0] + 3) // 4, (mask_size[1] + 3) // 4, generator=generator)
    masks = 4 * F.interpolate(coarse, size=mask_size, mode="bilinear", align_corners=False)[:, 0] + 1.0
    logits[-1], masks[-1] = logits[0], masks[0]
    return logits, masks


def _reference(processor, mask_cls, mask_logits, padded_size, image_size, output_size):
    """Mask2Former's inference on the masks of every query at the output size."""
    masks = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)[0]
    masks = sem_seg_postprocess(masks, image_size, *output_size)
    num_classes = processor.num_classes
    probs = F.softmax(mask_cls, dim=-1)
    semantic = torch.einsum("qc,qhw->chw", probs[:, :-1], masks.sigmoid())

    scores, labels = probs.max(-1)
    keep = labels.ne(num_classes) & (scores > processor.object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], masks[keep].sigmoid()
    panoptic_seg = torch.zeros(output_size, dtype=torch.int32)
    segments_info, stuff_ids = [], {}
    if len(cur_masks):
        ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
        for k, pred_class in enumerate(cur_classes.tolist()):
            is_thing = pred_class in THINGS.values()
            mask_area = (ids == k).sum().item()
            original_area = (cur_masks[k] >= 0.5).sum().item()
            mask = (ids == k) & (cur_masks[k] >= 0.5)
            if mask_area == 0 or original_area == 0 or mask.sum().item() == 0:
                continue
            if mask_area / original_area < processor.overlap_threshold:
                continue
            if not is_thing and pred_class in stuff_ids:
                panoptic_seg[mask] = stuff_ids[pred_class]
                continue
            segment_id = len(segments_info) + 1
            if not is_thing:
                stuff_ids[pred_class] = segment_id
            panoptic_seg[mask] = segment_id
            segments_info.append({"id": segment_id, "isthing": is_thing, "category_id": pred_class})

    class_scores = probs[:, :-1].flatten()
    topk_scores, topk_indices = class_scores.topk(min(processor.test_topk_per_image, len(class_scores)), sorted=False)
    topk_classes = topk_indices % num_classes
    topk_masks = masks[topk_indices // num_classes]
    if processor.panoptic_on:
        is_thing = torch.tensor([c in THINGS.values() for c in topk_classes.tolist()], dtype=torch.bool)
        topk_scores, topk_classes, topk_masks = topk_scores[is_thing], topk_classes[is_thing], topk_masks[is_thing]
    binary = (topk_masks > 0).float()
    mask_scores = (topk_masks.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    instances = {"masks": binary > 0, "scores": topk_scores * mask_scores, "classes": topk_classes}
    return semantic, (panoptic_seg, segments_info), instances


def _check_equal(result, reference):
    semantic, (panoptic_seg, segments_info), instances = reference
    assert result["sem_seg"].shape == semantic.shape
    assert (result["sem_seg"] - semantic).abs().max() < SEMANTIC_TOL
    top2 = semantic.topk(2, dim=0).values
    decided = top2[0] - top2[1] > 2 * SEMANTIC_TOL  # argmax can only differ within rounding of a tie
    assert torch.equal(result["sem_seg"].argmax(0)[decided], semantic.argmax(0)[decided])
    assert result["panoptic_seg"][0].dtype == torch.int32
    assert torch.equal(result["panoptic_seg"][0], panoptic_seg)
    assert result["panoptic_seg"][1] == segments_info
    predicted = result["instances"]
    assert tuple(predicted.image_size) == tuple(panoptic_seg.shape)
    assert predicted.pred_masks.dtype == torch.bool
    assert torch.equal(predicted.pred_masks, instances["masks"])
    assert torch.equal(predicted.pred_classes, instances["classes"])
    assert (predicted.scores - instances["scores"]).abs().max() < SCORE_TOL
    assert torch.equal(predicted.pred_boxes.tensor, BitMasks(instances["masks"]).get_bounding_boxes().tensor)


@pytest.mark.parametrize("padded_size, image_size, output_size, chunk_queries", [
    ((64, 96), (64, 96), (64, 96), None),  # evaluation at the test size: one chunk
    ((32, 32), (27, 31), (131, 77), 3),  # odd sizes, crop, resize, a partial last chunk
    ((64, 64), (61, 64), (640, 720), 1),  # a large original size behind a small padded size
    ((96, 128), (90, 125), (200, 150), 2),  # chunks upsampled to the padded size too
])
def test_postprocessing_equals_full_resolution_inference(monkeypatch, padded_size, image_size, output_size,
                                                         chunk_queries):
    if chunk_queries is not None:
        monkeypatch.setattr(postprocessing, "CHUNK_ELEMENTS", chunk_queries * output_size[0] * output_size[1])
    processor = _postprocessor()
    num_queries = 12
    logits, masks = _random_outputs(num_queries, (padded_size[0] // 4, padded_size[1] // 4), seed=4)
    (result,) = processor(logits[None], masks[None], [image_size], [output_size], padded_size)
    reference = _reference(processor, logits, masks, padded_size, image_size, output_size)
    assert len(reference[1][1]) >= 2 and len(reference[2]["scores"]) >= 5  # the data exercises the rules
    _check_equal(result, reference)


def test_semantic_only_inference_at_padded_size_equals_full_computation():
    processor = _postprocessor(panoptic=False, instance=False)
    processor.sem_seg_postprocess_before_inference = False
    logits, masks = _random_outputs(7, (8, 12), seed=3)
    (result,) = processor(logits[None], masks[None], [(29, 41)], [(58, 82)], (32, 48))
    padded = F.interpolate(masks[None], size=(32, 48), mode="bilinear", align_corners=False)[0]
    semantic = torch.einsum("qc,qhw->chw", F.softmax(logits, -1)[:, :-1], padded.sigmoid())
    expected = sem_seg_postprocess(semantic, (29, 41), 58, 82)
    assert sorted(result) == ["sem_seg"]
    assert (result["sem_seg"] - expected).abs().max() < SEMANTIC_TOL


def test_panoptic_tie_goes_to_the_first_query_across_chunks(monkeypatch):
    """Two equal queries (same score, masks saturated to probability 1) in different chunks: the first wins
    every pixel, as argmax; the second wins none and is dropped."""
    monkeypatch.setattr(postprocessing, "CHUNK_ELEMENTS", 1)
    logits = torch.full((3, NUM_CLASSES + 1), -10.0)
    logits[:, 1] = 10.0  # thing class 1
    masks = torch.full((3, 6, 6), -30.0)
    masks[0, :, :3] = masks[2, :, :3] = 30.0
    masks[1, :, 3:] = 30.0
    panoptic_seg, segments_info = _postprocessor().panoptic_inference(logits, masks)
    assert segments_info == [{"id": 1, "isthing": True, "category_id": 1}, {"id": 2, "isthing": True, "category_id": 1}]
    assert (panoptic_seg[:, :3] == 1).all() and (panoptic_seg[:, 3:] == 2).all()


def test_large_output_size_does_not_allocate_queries_times_pixels():
    """200 queries at 2500x2500 would be 5 GB of float32 masks (a 64x64 padded input); panoptic and instance
    results fit in 500 MB: only the kept and top queries are resized, one chunk at a time. Semantic inference
    of 32 queries at 2000x2000 (0.5 GB of masks) fits in 300 MB."""
    logits = torch.full((200, NUM_CLASSES + 1), -5.0)
    logits[:, -1] = 5.0  # no-object
    logits[:3, :3] = torch.eye(3) * 12  # three confident things
    masks = torch.randn(200, 16, 16, generator=torch.Generator().manual_seed(0))
    processor = _postprocessor(semantic=False, topk=3)
    with address_space_budget(500 * 2 ** 20):
        (result,) = processor(logits[None], masks[None], [(64, 64)], [(2500, 2500)], (64, 64))
        assert len(result["panoptic_seg"][1]) == 3 and len(result["instances"]) == 3
        del result
    semantic = _postprocessor(panoptic=False, instance=False)
    with address_space_budget(300 * 2 ** 20):
        (result,) = semantic(logits[None, :32], masks[None, :32], [(64, 64)], [(2000, 2000)], (64, 64))
    assert result["sem_seg"].shape == (NUM_CLASSES, 2000, 2000)


def test_query_masks_move_like_tensors_for_retry_if_cuda_oom():
    """retry_if_cuda_oom retries on the CPU by calling `x.to(device="cpu")` on arguments with a CUDA device."""
    masks = postprocessing.QueryMasks(torch.randn(3, 8, 8), (32, 32), (30, 31), (60, 62))
    moved = masks.to(device="cpu")
    assert moved.device == torch.device("cpu") and moved.size == (60, 62)
    (_, expected), = masks.chunks()
    (_, actual), = moved.chunks()
    assert torch.equal(actual, expected)


def count_upsampled_queries(monkeypatch) -> list:
    """From now on, the number of queries of each chunk upsampled to the output size is appended to the list."""
    upsampled = []
    at_output_size = postprocessing.QueryMasks._at_output_size

    def counting(self, masks):
        upsampled.append(len(masks))
        return at_output_size(self, masks)

    monkeypatch.setattr(postprocessing.QueryMasks, "_at_output_size", counting)
    return upsampled


@pytest.mark.parametrize("semantic", [True, False])
def test_each_needed_query_is_upsampled_once_for_all_results(monkeypatch, semantic):
    """One pass feeds semantic, panoptic and instance results: every query is upsampled once with semantic
    results on; without them only the kept and top queries are, once each, although they overlap. (An output
    size with H + W > 128, where chunks hold the very values of the whole computation: see QueryMasks.)"""
    monkeypatch.setattr(postprocessing, "CHUNK_ELEMENTS", 3 * 70 * 66)
    upsampled = count_upsampled_queries(monkeypatch)
    processor = _postprocessor(semantic=semantic, topk=10)
    logits, masks = _random_outputs(12, (8, 8), seed=4)
    (result,) = processor(logits[None], masks[None], [(30, 31)], [(70, 66)], (32, 32))
    monkeypatch.undo()
    kept = set(postprocessing.PanopticMerge(processor, logits, (70, 66)).queries.tolist())
    top = set(postprocessing.TopInstances(processor, logits, (70, 66)).queries.tolist())
    assert kept & top and kept - top and top - kept  # the two overlap, and neither holds the other
    assert sum(upsampled) == (12 if semantic else len(kept | top))
    assert max(upsampled) <= 3
    reference = _reference(processor, logits, masks, (32, 32), (30, 31), (70, 66))
    if semantic:
        _check_equal(result, reference)
    else:
        assert torch.equal(result["panoptic_seg"][0], reference[1][0]) and "sem_seg" not in result
        assert torch.equal(result["instances"].pred_masks, reference[2]["masks"])


@pytest.mark.parametrize("tasks", [("panoptic",), ("instance",), ("semantic",), ("semantic", "instance")])
def test_tasks_compute_only_the_asked_results_each_as_with_all(monkeypatch, tasks):
    """Asking for some tasks returns those results only, each equal to its result when all are computed (with
    panoptic on, instances stay of thing classes), and upsamples only the queries they need."""
    processor = _postprocessor(topk=6)
    logits, masks = _random_outputs(12, (8, 8), seed=4)
    (everything,) = processor(logits[None], masks[None], [(30, 31)], [(70, 66)], (32, 32))
    upsampled = count_upsampled_queries(monkeypatch)
    processor.tasks = tasks
    (result,) = processor(logits[None], masks[None], [(30, 31)], [(70, 66)], (32, 32))
    assert sorted(result) == sorted(postprocessing.TASKS[task] for task in tasks)
    if "panoptic" in tasks:
        assert torch.equal(result["panoptic_seg"][0], everything["panoptic_seg"][0])
        assert result["panoptic_seg"][1] == everything["panoptic_seg"][1]
    if "instance" in tasks:
        for field in ("pred_masks", "pred_classes", "scores"):
            assert torch.equal(getattr(result["instances"], field), getattr(everything["instances"], field)), field
        assert set(result["instances"].pred_classes.tolist()) <= set(THINGS.values())
    if "semantic" in tasks:
        assert torch.equal(result["sem_seg"], everything["sem_seg"])
    else:
        assert sum(upsampled) < 12  # only the kept or top queries
    processor.tasks = None
    assert processor.tasks == ("panoptic", "instance", "semantic")


def test_tasks_the_model_does_not_compute_are_refused_naming_the_ones_it_does():
    processor = _postprocessor(panoptic=False, instance=False)
    with pytest.raises(ValueError, match=r"\('panoptic',\): this model computes semantic"):
        processor.tasks = ["panoptic"]
    with pytest.raises(ValueError, match="ask for one or more"):
        processor.tasks = ()
    processor.tasks = "semantic"
    assert processor.tasks == ("semantic",)
