"""tools/analyze_model.py: parameter counts and FLOP handles for neighborhood, deformable and window attention."""

import pytest
import torch
from project_paths import REPO as ROOT, import_script

COCO_PANOPTIC = str(ROOT / "configs" / "coco" / "panoptic" / "dinat_l.yaml")


@pytest.fixture(scope="module")
def analyze_model():
    return import_script(ROOT / "tools" / "analyze_model.py", "analyze_model")


def test_parameter_count_of_dinat_l_coco_panoptic(analyze_model):
    counts = analyze_model.count_parameters(analyze_model.load_cfg(COCO_PANOPTIC, []))
    assert counts["total"] == 219_944_344
    assert counts["backbone"] + counts["pixel decoder"] + counts["transformer decoder"] == counts["total"]


def test_flops_count_neighborhood_and_deformable_attention(analyze_model):
    """A small DiNAT (k=3, no dilation, one block per level) on 128x128: NA maps are 32, 16, 8, 4 wide, so no
    padding and the count is analytic."""
    embed_dim, kernel = 32, 3
    cfg = analyze_model.load_cfg(
        COCO_PANOPTIC,
        [
            "MODEL.DINAT.EMBED_DIM", embed_dim,
            "MODEL.DINAT.DEPTHS", [1, 1, 1, 1],
            "MODEL.DINAT.NUM_HEADS", [2, 4, 8, 16],
            "MODEL.DINAT.KERNEL_SIZE", kernel,
            "MODEL.DINAT.DILATIONS", [[1], [1], [1], [1]],
            "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
            "MODEL.SEM_SEG_HEAD.MASK_DIM", 32,
            "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 1,
            "MODEL.MASK_FORMER.HIDDEN_DIM", 32,
            "MODEL.MASK_FORMER.NHEADS", 4,
            "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 64,
            "MODEL.MASK_FORMER.DEC_LAYERS", 4,
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 10,
        ],
    )
    total, by_operator = analyze_model.count_flops(cfg, 128, 128)
    # QK and AV over k*k neighbors for every token and channel of each level (stride 4..32)
    sides = [128 // 4, 128 // 8, 128 // 16, 128 // 32]
    channels = [embed_dim * 2**i for i in range(4)]
    expected_na = sum(2 * side * side * kernel * kernel * c for side, c in zip(sides, channels))
    assert by_operator["PythonOp.NeighborhoodAttentionOp"] == expected_na
    # one encoder layer; every token of res3..res5 samples 4 points on each of 3 levels, 32 channels, 5 per value
    tokens = sum(side * side for side in sides[1:])
    # (traced without gradients on the CPU: the embedding_bag form, counted as grid_sample's would be)
    assert by_operator["embedding_bag"] == 5 * tokens * 3 * 4 * 32
    assert by_operator["scaled_dot_product_attention"] > 0
    assert total == sum(by_operator.values())


def test_flops_count_swin_window_attention_over_the_padded_windows(analyze_model):
    """Swin's window attention runs in scaled_dot_product_attention and is counted by its handle: QK and AV,
    each tokens * M*M * C per block, over the maps padded to the window (128x128, window 7: 32 -> 35,
    16 -> 21, 8 -> 14, 4 -> 7)."""
    from fvcore.nn import FlopCountAnalysis

    from dinat_m2f.modeling.backbone.swin import from_reference_config

    embed_dim, window, depths = 16, 7, [2, 2, 2, 2]
    backbone = from_reference_config(dict(embed_dim=embed_dim, depths=depths, num_heads=[1, 2, 4, 8],
                                          window_size=window)).eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(backbone, (torch.randn(1, 3, 128, 128),))
        analysis.set_op_handle("aten::scaled_dot_product_attention", analyze_model.sdpa_flop_handle)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_operator = analysis.by_operator()
    padded = [35, 21, 14, 7]
    expected = sum(depth * 2 * side * side * window * window * embed_dim * 2 ** i
                   for i, (side, depth) in enumerate(zip(padded, depths)))
    assert by_operator["scaled_dot_product_attention"] == expected

    cfg = analyze_model.load_cfg(str(ROOT / "configs" / "synthetic" / "panoptic" / "swin_mini.yaml"), [])
    total, by_operator = analyze_model.count_flops(cfg, 160, 160)
    assert total == sum(by_operator.values()) and by_operator["scaled_dot_product_attention"] > 0


def test_flops_count_hrvit_stripe_attention_over_the_padded_stripes(analyze_model):
    """HRViT's stripe attention is counted by the scaled_dot_product_attention handle: per block and channel
    half, QK and AV, each stripes * (s * width)^2 * C/2, over the map padded to the stripe (96x96, maps 24, 12,
    6, 3; stripes 1, 2, 7, 7: 6 -> 7 and 3 -> 7)."""
    from fvcore.nn import FlopCountAnalysis

    from dinat_m2f.modeling.backbone.hrvit import from_reference_config

    layout = dict(channels=8, channel_list=[[8], [8, 16], [8, 16, 16], [8, 16, 16, 16]],
                  block_list=[[1], [1, 1], [1, 1, 1], [1, 1, 1, 1]], dim_head=8, ws_list=[1, 2, 7, 7],
                  mlp_ratio_list=[2, 2, 2, 2])
    backbone = from_reference_config(layout).eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(backbone, (torch.randn(1, 3, 96, 96),))
        analysis.set_op_handle("aten::scaled_dot_product_attention", analyze_model.sdpa_flop_handle)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_operator = analysis.by_operator()
    expected = 0
    for dims, blocks in zip(layout["channel_list"], layout["block_list"]):
        for i, (channels, count) in enumerate(zip(dims, blocks)):
            side, stripe = 96 // 4 // 2 ** i, layout["ws_list"][i]
            padded = -(-side // stripe) * stripe
            # two halves (rows, columns), each (padded / stripe) stripes of stripe * side tokens
            expected += count * 2 * 2 * (padded // stripe) * (stripe * side) ** 2 * (channels // 2)
    assert by_operator["scaled_dot_product_attention"] == expected
