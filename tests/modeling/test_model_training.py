"""Training of the MaskFormer model: matcher, set criterion with deep supervision, gradients, autocast.
A tiny DiNAT + Mask2Former keeps these fast."""
import pytest
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances

import dinat_m2f.modeling.backbone.dinat  # noqa: F401  (registers D2DiNAT)
import dinat_m2f.maskformer_model  # noqa: F401  (registers MaskFormer)
from dinat_m2f.config import get_project_cfg
from dinat_m2f.modeling.matcher import HungarianMatcher

TINY_DATASET = "m2f_test_tiny_panoptic"
NUM_CLASSES = 5  # classes 0-2 are things, 3-4 stuff
DEC_LAYERS = 4


def tiny_cfg() -> CfgNode:
    MetadataCatalog.get(TINY_DATASET).set(
        stuff_classes=["a", "b", "c", "d", "e"],
        thing_classes=["a", "b", "c"],
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2},
        stuff_dataset_id_to_contiguous_id={i + 1: i for i in range(NUM_CLASSES)},
    )
    cfg = get_project_cfg()
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.META_ARCHITECTURE", "MaskFormer",
            "MODEL.BACKBONE.NAME", "D2DiNAT",
            "MODEL.DINAT.EMBED_DIM", 32,
            "MODEL.DINAT.DEPTHS", [1, 1, 1, 1],
            "MODEL.DINAT.NUM_HEADS", [2, 4, 8, 16],
            "MODEL.DINAT.KERNEL_SIZE", 3,
            "MODEL.DINAT.DILATIONS", [[2], [1], [1], [1]],
            "MODEL.DINAT.DROP_PATH_RATE", 0.0,
            "MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53],
            "MODEL.PIXEL_STD", [58.395, 57.12, 57.375],
            "MODEL.SEM_SEG_HEAD.NAME", "MaskFormerHead",
            "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res3", "res4", "res5"],
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", NUM_CLASSES,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
            "MODEL.SEM_SEG_HEAD.MASK_DIM", 32,
            "MODEL.SEM_SEG_HEAD.NORM", "GN",
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "MSDeformAttnPixelDecoder",
            "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 1,
            "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "multi_scale_pixel_decoder",
            "MODEL.MASK_FORMER.HIDDEN_DIM", 32,
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 6,
            "MODEL.MASK_FORMER.NHEADS", 4,
            "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 64,
            "MODEL.MASK_FORMER.DROPOUT", 0.0,
            "MODEL.MASK_FORMER.DEC_LAYERS", DEC_LAYERS,
            "MODEL.MASK_FORMER.CLASS_WEIGHT", 2.0,
            "MODEL.MASK_FORMER.MASK_WEIGHT", 5.0,
            "MODEL.MASK_FORMER.DICE_WEIGHT", 5.0,
            "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 1024,
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", True,
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON", True,
            "DATASETS.TRAIN", [TINY_DATASET],
        ]
    )
    return cfg


def make_input(height: int, width: int, boxes, classes, seed: int) -> dict:
    """A random image with rectangular ground-truth masks (x0, y0, x1, y1)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    masks = torch.zeros((len(boxes), height, width), dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
        image[:, y0:y1, x0:x1] //= 2  # make objects visible in the pixels
    instances = Instances((height, width))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    instances.gt_masks = masks
    return {"image": image, "height": height, "width": width, "instances": instances}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def expected_loss_names():
    base = ["loss_ce", "loss_mask", "loss_dice"]
    return sorted(base + [f"{k}_{i}" for i in range(DEC_LAYERS - 1) for k in base])


def test_training_step_gives_all_finite_losses_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    model.train()
    batch = [
        make_input(64, 96, [(4, 4, 40, 30), (50, 20, 90, 60)], [0, 3], seed=1),
        # sizes differ: padded in the model, targets padded with it
        make_input(60, 70, [(0, 0, 70, 30)], [4], seed=2),
    ]
    losses = model(batch)
    assert sorted(losses) == expected_loss_names()
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name

    # Deformable attention starts with zero offset/attention-weight projections, so the encoder's query
    # (and with it transformer.level_embed) gets a zero gradient in the very first step: check the second.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    sum(losses.values()).backward()
    optimizer.step()
    optimizer.zero_grad()
    sum(model(batch).values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not no_grad, f"parameters without a gradient: {no_grad}"


def test_image_without_instances_trains(tiny_model):
    tiny_model.train()
    batch = [make_input(64, 64, [(8, 8, 40, 40)], [1], seed=3), make_input(64, 64, [], [], seed=4)]
    losses = tiny_model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_autocast_bfloat16_step_keeps_pixel_decoder_and_losses_in_float32(tiny_model):
    tiny_model.train()
    batch = [make_input(64, 64, [(8, 8, 40, 40)], [2], seed=5)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = tiny_model.backbone(torch.randn(1, 3, 64, 64))
        mask_features, _, multi_scale = tiny_model.sem_seg_head.pixel_decoder.forward_features(
            {k: v.to(torch.bfloat16) for k, v in features.items()}
        )
        losses = tiny_model(batch)
    assert mask_features.dtype == torch.float32
    assert all(f.dtype == torch.float32 for f in multi_scale)
    for name, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    sum(losses.values()).backward()


def test_a_few_steps_on_one_image_drive_the_loss_down():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = [make_input(64, 64, [(4, 4, 30, 60), (34, 10, 60, 40)], [0, 3], seed=6)]
    totals = []
    for _ in range(18):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    first, last = sum(totals[:3]) / 3, sum(totals[-3:]) / 3
    assert last < 0.6 * first, totals


def test_matcher_recovers_a_permutation():
    """Predictions that are a shuffled copy of the targets are matched back to them."""
    torch.manual_seed(0)
    num_targets, num_queries, size = 3, 5, 32
    masks = torch.zeros(num_targets, size, size)
    masks[0, :16] = 1
    masks[1, 16:, :16] = 1
    masks[2, 16:, 16:] = 1
    labels = torch.tensor([2, 0, 4])
    order = torch.tensor([3, 0, 4])  # query holding target t
    pred_masks = torch.full((1, num_queries, size, size), -10.0)
    pred_logits = torch.zeros(1, num_queries, NUM_CLASSES + 1)
    pred_logits[0, :, -1] = 5.0  # others predict no-object
    for t, q in enumerate(order):
        pred_masks[0, q] = masks[t] * 20 - 10
        pred_logits[0, q] = 0.0
        pred_logits[0, q, labels[t]] = 10.0
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=512)
    [(queries, targets)] = matcher(
        {"pred_logits": pred_logits, "pred_masks": pred_masks}, [{"labels": labels, "masks": masks}]
    )
    assert queries.dtype == targets.dtype == torch.int64
    assert dict(zip(targets.tolist(), queries.tolist())) == {t: q.item() for t, q in enumerate(order)}


def test_masks_given_as_bitmasks_are_accepted(tiny_model):
    tiny_model.train()
    sample = make_input(64, 64, [(8, 8, 40, 40)], [1], seed=7)
    sample["instances"].gt_masks = BitMasks(sample["instances"].gt_masks)
    losses = tiny_model([sample])
    assert all(torch.isfinite(v) for v in losses.values())
