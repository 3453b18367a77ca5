"""MaskFormer inference: the results are made from the last decoder layer's predictions, and the earlier layers'
masks (the head's aux_outputs, which only the training losses read) are freed before post-processing, the
memory peak of an evaluation."""
import weakref

import torch
from detectron2.modeling import build_model

import dinat_m2f.data  # noqa: F401  (registers the datasets the configs name)
import dinat_m2f.maskformer_model  # noqa: F401  (registers the model)
from dinat_m2f.config import load_project_config
from project_paths import CONFIGS


def test_earlier_layers_masks_are_freed_before_post_processing():
    cfg = load_project_config(CONFIGS / "synthetic" / "panoptic" / "dinat_mini.yaml",
                              ["MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.DEC_LAYERS", "3"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    head_outputs = {}

    def keep_weak_references(module, inputs, outputs):
        head_outputs["aux"] = [weakref.ref(aux["pred_masks"]) for aux in outputs["aux_outputs"]]
        head_outputs["last"] = (outputs["pred_logits"], outputs["pred_masks"])

    model.sem_seg_head.register_forward_hook(keep_weak_references)
    postprocessor = model.postprocessor
    alive_in_post_processing = []

    def post_process(pred_logits, pred_masks, *args):
        alive_in_post_processing.extend(ref() is not None for ref in head_outputs["aux"])
        assert pred_logits is head_outputs["last"][0] and pred_masks is head_outputs["last"][1]
        return postprocessor(pred_logits, pred_masks, *args)

    model.postprocessor = post_process
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        results = model([{"image": image, "height": 64, "width": 96}])
    assert len(head_outputs["aux"]) == 2  # DEC_LAYERS 3: 3 predictions, the last one is the result
    assert alive_in_post_processing == [False, False]
    assert set(results[0]) == {"sem_seg", "panoptic_seg", "instances"}
    assert results[0]["sem_seg"].shape == (5, 64, 96)
