#!/usr/bin/env python
"""Parameters and FLOPs of a DiNAT + Mask2Former model built from a config.

    python tools/analyze_model.py --config-file configs/coco/panoptic/dinat_l.yaml --size 800 800

Parameters are counted on the meta device (no memory, no weights needed). FLOPs are counted by fvcore for
one forward pass of backbone + head on a fixed-size random image (randomly initialized weights: FLOPs do
not depend on them), without post-processing (semantic/panoptic/instance inference). As in fvcore and the
papers, one multiply-add is one FLOP. fvcore does not know some ops; they get handles here:
- neighborhood attention: QK and AV, each B * heads * H * W * k * k * D (H, W after NATTEN's padding of
  small maps), whatever the implementation computes in its tiles.
- multi-scale deformable attention: per sampled value, 4 for bilinear interpolation (aten::grid_sampler,
  or aten::embedding_bag, the form CPU inference runs) and 1 for its attention weight.
- scaled_dot_product_attention (nn.MultiheadAttention): QK and AV, each B * heads * Lq * Lk * D.
  Swin's window attention runs in it too: Lq = Lk = M*M per window, over the map padded to the window.
  So does HRViT's stripe attention: Lq = Lk = stripe rows x full width (or full height x stripe columns),
  over the map padded to the stripe.
Elementwise ops (softmax, additions, activations) are not counted, as in fvcore. ShiftViT's shift is data
movement (slices copied into a zero map): 0 multiply-adds, as in its paper; fvcore ignores those ops.
"""
import argparse
import contextlib
import logging
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dinat_m2f  # noqa: E402  (registers the model)
import dinat_m2f.data  # noqa: E402,F401  (registers the datasets the configs name)
from dinat_m2f.config import load_project_config  # noqa: E402
from dinat_m2f.export import MaskFormerNetwork  # noqa: E402
from dinat_m2f.layers.neighborhood_attention import module as na_module  # noqa: E402

logger = logging.getLogger("analyze_model")

# NeighborhoodAttention2D calls this module-level function; the FLOP count routes it through one traced op.
_NA2D = na_module.na2d


class NeighborhoodAttentionOp(torch.autograd.Function):
    """Runs ``na2d`` (inference only) as one opaque op, so that a jit trace shows neighborhood attention as a
    single node, prim::PythonOp.NeighborhoodAttentionOp, whatever ops its implementation uses inside."""

    @staticmethod
    def forward(ctx, q, k, v, rpb, kernel_size, dilation):
        tracing_state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)  # the implementation's own ops stay out of the trace
        try:
            return _NA2D(q, k, v, kernel_size, dilation, rpb)
        finally:
            torch._C._set_tracing_state(tracing_state)


@contextlib.contextmanager
def neighborhood_attention_as_one_op() -> Iterator[None]:
    """Make NeighborhoodAttention2D call na2d through NeighborhoodAttentionOp."""

    def na2d_one_op(q, k, v, kernel_size, dilation=1, rpb=None, *, dropout_p=0.0):
        if dropout_p:
            raise ValueError("FLOPs are counted in eval mode (no attention dropout)")
        return NeighborhoodAttentionOp.apply(q, k, v, rpb, kernel_size, dilation)

    na_module.na2d = na2d_one_op
    try:
        yield
    finally:
        na_module.na2d = _NA2D


def na_flop_handle(kernel_size: int):
    """QK and AV of neighborhood attention: each B * heads * H * W * k * k * D multiply-adds."""

    def handle(inputs: List, outputs: List) -> int:
        batch, heads, height, width, head_dim = get_shape(inputs[0])
        return 2 * batch * heads * height * width * kernel_size * kernel_size * head_dim

    return handle


def grid_sampler_flop_handle(inputs: List, outputs: List) -> int:
    # output (N * heads, D, Lq, points): bilinear interpolation (4) + the attention weight (1) per value
    return 5 * math.prod(get_shape(outputs[0]))


def embedding_bag_flop_handle(inputs: List, outputs: List) -> int:
    # The CPU inference form of the same sampling: output (N * Lq * heads, D), 4 corner rows per sampled point
    # (the rows flattened into inputs[1]); counted as grid_sampler's, 5 per sampled value.
    head_dim = get_shape(outputs[0])[-1]
    rows = math.prod(get_shape(inputs[1]))
    return 5 * head_dim * rows // 4


def sdpa_flop_handle(inputs: List, outputs: List) -> int:
    *batch, num_queries, head_dim = get_shape(inputs[0])
    num_keys = get_shape(inputs[1])[-2]
    return 2 * math.prod(batch) * num_queries * num_keys * head_dim


def load_cfg(config_file: str, opts: List[str]) -> CfgNode:
    return load_project_config(config_file, opts)


def count_parameters(cfg: CfgNode) -> Dict[str, int]:
    """Parameters of the whole model and of its main parts, built on the meta device."""
    cfg = cfg.clone()
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    parts = {
        "backbone": model.backbone,
        "pixel decoder": model.sem_seg_head.pixel_decoder,
        "transformer decoder": model.sem_seg_head.predictor,
    }
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def count_flops(cfg: CfgNode, height: int, width: int) -> Tuple[int, Counter]:
    """FLOPs (multiply-adds) of backbone + head on one (height, width) image; also per operator."""
    cfg = cfg.clone()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg).eval()
    network = MaskFormerNetwork(model).eval()
    images = torch.randn(1, 3, height, width)
    with torch.no_grad(), neighborhood_attention_as_one_op():
        analysis = FlopCountAnalysis(network, (images,))
        analysis.set_op_handle(
            **{
                "prim::PythonOp.NeighborhoodAttentionOp": na_flop_handle(cfg.MODEL.DINAT.KERNEL_SIZE),
                "aten::grid_sampler": grid_sampler_flop_handle,
                "aten::embedding_bag": embedding_bag_flop_handle,
                "aten::scaled_dot_product_attention": sdpa_flop_handle,
            }
        )
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = analysis.total()
        by_operator = Counter(analysis.by_operator())
        unsupported = analysis.unsupported_ops()
    if unsupported:
        logger.info(f"ops not counted (elementwise or unknown): {dict(unsupported)}")
    return total, by_operator


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--size", nargs=2, type=int, default=[800, 800], metavar=("H", "W"),
                        help="input size for the FLOP count (default 800 800)")
    parser.add_argument("--tasks", nargs="+", choices=["parameter", "flop"], default=["parameter", "flop"])
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cfg = load_cfg(args.config_file, args.opts)

    if "parameter" in args.tasks:
        for name, count in count_parameters(cfg).items():
            print(f"parameters  {name:<28} {count:>14,}  ({count / 1e6:.1f}M)")
    if "flop" in args.tasks:
        height, width = args.size
        total, by_operator = count_flops(cfg, height, width)
        for op, flops in by_operator.most_common():
            print(f"GFLOPs      {op:<40} {flops / 1e9:>14.1f}")
        print(f"GFLOPs      {'total':<40} {total / 1e9:>14.1f}  at {height}x{width}")


if __name__ == "__main__":
    main()
