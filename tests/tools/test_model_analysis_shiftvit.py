"""tools/analyze_model.py on a ShiftViT model: a block costs exactly its MLP and GN1 (the shift is 0 FLOPs)."""

from project_paths import REPO, import_script

SHIFTVIT_T = str(REPO / "configs" / "coco" / "panoptic" / "shiftvit_t.yaml")
SMALL_HEAD = ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.SEM_SEG_HEAD.MASK_DIM", 32,
              "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 1, "MODEL.MASK_FORMER.HIDDEN_DIM", 32,
              "MODEL.MASK_FORMER.NHEADS", 4, "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 64,
              "MODEL.MASK_FORMER.DEC_LAYERS", 2, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 10]


def test_one_more_shift_block_adds_its_mlp_and_norm_only():
    analyze_model = import_script(REPO / "tools" / "analyze_model.py", "analyze_model")
    embed_dim, ratio, side = 16, 2.0, 64 // 4
    counts = []
    for depths in ([1, 1, 1, 1], [2, 1, 1, 1]):
        cfg = analyze_model.load_cfg(SHIFTVIT_T, ["MODEL.SHIFTVIT.EMBED_DIM", embed_dim, "MODEL.SHIFTVIT.DEPTHS", depths,
                                                  "MODEL.SHIFTVIT.MLP_RATIO", ratio, "MODEL.SHIFTVIT.N_DIV", 4, *SMALL_HEAD])
        counts.append(analyze_model.count_flops(cfg, 64, 64))
    (total_1, ops_1), (total_2, ops_2) = counts
    tokens, hidden = side * side, int(embed_dim * ratio)
    assert ops_2["conv"] - ops_1["conv"] == 2 * tokens * embed_dim * hidden  # fc1 and fc2 (1x1 convolutions)
    assert ops_2["group_norm"] - ops_1["group_norm"] == 5 * tokens * embed_dim  # fvcore: 5 per element with affine
    assert total_2 - total_1 == 2 * tokens * embed_dim * hidden + 5 * tokens * embed_dim
