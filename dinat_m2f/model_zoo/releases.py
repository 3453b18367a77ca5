"""The released checkpoints of the model zoo: Mask2Former's 43 image models (facebookresearch/Mask2Former's model
zoo) and the 8 Mask2Former-DiNAT-L ones (SHI-Labs' DiNAT model zoo; there is no COCO semantic release), keyed by
model name (the config path under configs/ without .yaml). Metrics are the releasing repository's, as published
(mIoU (ms+flip): multi-scale and flipped testing); `paper` holds the DiNAT paper's result where it differs."""
from dataclasses import dataclass, field
from typing import Dict

__all__ = ["RELEASES", "Release"]


@dataclass(frozen=True)
class Release:
    url: str
    metrics: Dict[str, float]
    paper: Dict[str, float] = field(default_factory=dict)


M2F = "https://dl.fbaipublicfiles.com/maskformer/mask2former/"
DINAT = "https://shi-labs.com/projects/dinat/checkpoints/m2f/"

RELEASES: Dict[str, Release] = {
    "coco/panoptic/r50": Release(
        M2F + "coco/panoptic/maskformer2_R50_bs16_50ep/model_final_94dc52.pkl",
        {"PQ": 51.9, "AP": 41.7, "mIoU": 61.7}),
    "coco/panoptic/r101": Release(
        M2F + "coco/panoptic/maskformer2_R101_bs16_50ep/model_final_b807bd.pkl",
        {"PQ": 52.6, "AP": 42.6, "mIoU": 62.4}),
    "coco/panoptic/swin_t": Release(
        M2F + "coco/panoptic/maskformer2_swin_tiny_bs16_50ep/model_final_9fd0ae.pkl",
        {"PQ": 53.2, "AP": 43.3, "mIoU": 63.2}),
    "coco/panoptic/swin_s": Release(
        M2F + "coco/panoptic/maskformer2_swin_small_bs16_50ep/model_final_a407fd.pkl",
        {"PQ": 54.6, "AP": 44.7, "mIoU": 64.2}),
    "coco/panoptic/swin_b": Release(
        M2F + "coco/panoptic/maskformer2_swin_base_384_bs16_50ep/model_final_9d7f02.pkl",
        {"PQ": 55.1, "AP": 45.2, "mIoU": 65.1}),
    "coco/panoptic/swin_b_in21k": Release(
        M2F + "coco/panoptic/maskformer2_swin_base_IN21k_384_bs16_50ep/model_final_54b88a.pkl",
        {"PQ": 56.4, "AP": 46.3, "mIoU": 67.1}),
    "coco/panoptic/swin_l": Release(
        M2F + "coco/panoptic/maskformer2_swin_large_IN21k_384_bs16_100ep/model_final_f07440.pkl",
        {"PQ": 57.8, "AP": 48.6, "mIoU": 67.4}),
    "coco/panoptic/dinat_l": Release(
        DINAT + "mask2former_dinat_large_coco_panoptic.pth",
        {"PQ": 58.2, "AP": 49.2, "mIoU": 68.1}, paper={"PQ": 58.5}),
    "coco/instance/r50": Release(
        M2F + "coco/instance/maskformer2_R50_bs16_50ep/model_final_3c8ec9.pkl",
        {"AP": 43.7, "Boundary AP": 30.6}),
    "coco/instance/r101": Release(
        M2F + "coco/instance/maskformer2_R101_bs16_50ep/model_final_eba159.pkl",
        {"AP": 44.2, "Boundary AP": 31.1}),
    "coco/instance/swin_t": Release(
        M2F + "coco/instance/maskformer2_swin_tiny_bs16_50ep/model_final_86143f.pkl",
        {"AP": 45.0, "Boundary AP": 31.8}),
    "coco/instance/swin_s": Release(
        M2F + "coco/instance/maskformer2_swin_small_bs16_50ep/model_final_1e7f22.pkl",
        {"AP": 46.3, "Boundary AP": 32.9}),
    "coco/instance/swin_b": Release(
        M2F + "coco/instance/maskformer2_swin_base_384_bs16_50ep/model_final_f6e0f6.pkl",
        {"AP": 46.7, "Boundary AP": 33.2}),
    "coco/instance/swin_b_in21k": Release(
        M2F + "coco/instance/maskformer2_swin_base_IN21k_384_bs16_50ep/model_final_83d103.pkl",
        {"AP": 48.1, "Boundary AP": 34.4}),
    "coco/instance/swin_l": Release(
        M2F + "coco/instance/maskformer2_swin_large_IN21k_384_bs16_100ep/model_final_e5f453.pkl",
        {"AP": 50.1, "Boundary AP": 36.2}),
    "coco/instance/dinat_l": Release(
        DINAT + "mask2former_dinat_large_coco_instance.pth",
        {"AP": 50.7}, paper={"AP": 50.8}),
    "ade20k/panoptic/r50": Release(
        M2F + "ade20k/panoptic/maskformer2_R50_bs16_160k/model_final_5c90d4.pkl",
        {"PQ": 39.7, "AP": 26.5, "mIoU": 46.1}),
    "ade20k/panoptic/swin_l": Release(
        M2F + "ade20k/panoptic/maskformer2_swin_large_IN21k_384_bs16_160k/model_final_e0c58e.pkl",
        {"PQ": 48.1, "AP": 34.2, "mIoU": 54.5}),
    "ade20k/panoptic/dinat_l": Release(
        DINAT + "mask2former_dinat_large_ade20k_panoptic.pth",
        {"PQ": 48.5, "AP": 34.4, "mIoU": 56.2}, paper={"PQ": 49.4}),
    "ade20k/instance/r50": Release(
        M2F + "ade20k/instance/maskformer2_R50_bs16_160k/model_final_67e945.pkl",
        {"AP": 26.4}),
    "ade20k/instance/swin_l": Release(
        M2F + "ade20k/instance/maskformer2_swin_large_IN21k_384_bs16_160k/model_final_92dae9.pkl",
        {"AP": 34.9}),
    "ade20k/instance/dinat_l": Release(
        DINAT + "mask2former_dinat_large_ade20k_instance.pth",
        {"AP": 35.2}, paper={"AP": 35.4}),
    "ade20k/semantic/r50": Release(
        M2F + "ade20k/semantic/maskformer2_R50_bs16_160k/model_final_500878.pkl",
        {"mIoU": 47.2, "mIoU (ms+flip)": 49.2}),
    "ade20k/semantic/r101": Release(
        M2F + "ade20k/semantic/maskformer2_R101_bs16_90k/model_final_0d68be.pkl",
        {"mIoU": 47.8, "mIoU (ms+flip)": 50.1}),
    "ade20k/semantic/swin_t": Release(
        M2F + "ade20k/semantic/maskformer2_swin_tiny_bs16_160k/model_final_5274a6.pkl",
        {"mIoU": 47.7, "mIoU (ms+flip)": 49.6}),
    "ade20k/semantic/swin_s": Release(
        M2F + "ade20k/semantic/maskformer2_swin_small_bs16_160k/model_final_011c6d.pkl",
        {"mIoU": 51.3, "mIoU (ms+flip)": 52.4}),
    "ade20k/semantic/swin_b": Release(
        M2F + "ade20k/semantic/maskformer2_swin_base_384_bs16_160k_res640/model_final_503e96.pkl",
        {"mIoU": 52.4, "mIoU (ms+flip)": 53.7}),
    "ade20k/semantic/swin_b_in21k": Release(
        M2F + "ade20k/semantic/maskformer2_swin_base_IN21k_384_bs16_160k_res640/model_final_7e47bf.pkl",
        {"mIoU": 53.9, "mIoU (ms+flip)": 55.1}),
    "ade20k/semantic/swin_l": Release(
        M2F + "ade20k/semantic/maskformer2_swin_large_IN21k_384_bs16_160k_res640/model_final_6b4a3a.pkl",
        {"mIoU": 56.1, "mIoU (ms+flip)": 57.3}),
    "ade20k/semantic/dinat_l": Release(
        DINAT + "mask2former_dinat_large_ade20k_semantic.pth",
        {"mIoU (ms+flip)": 58.2}, paper={"mIoU": 58.1}),
    "cityscapes/panoptic/r50": Release(
        M2F + "cityscapes/panoptic/maskformer2_R50_bs16_90k/model_final_4ab90c.pkl",
        {"PQ": 62.1, "AP": 37.3, "mIoU": 77.5}),
    "cityscapes/panoptic/r101": Release(
        M2F + "cityscapes/panoptic/maskformer2_R101_bs16_90k/model_final_04d286.pkl",
        {"PQ": 62.4, "AP": 37.7, "mIoU": 78.6}),
    "cityscapes/panoptic/swin_t": Release(
        M2F + "cityscapes/panoptic/maskformer2_swin_tiny_bs16_90k/model_final_ceba0f.pkl",
        {"PQ": 63.9, "AP": 39.1, "mIoU": 80.5}),
    "cityscapes/panoptic/swin_s": Release(
        M2F + "cityscapes/panoptic/maskformer2_swin_small_bs16_90k/model_final_23efb7.pkl",
        {"PQ": 64.8, "AP": 40.7, "mIoU": 81.8}),
    "cityscapes/panoptic/swin_b_in21k": Release(
        M2F + "cityscapes/panoptic/maskformer2_swin_base_IN21k_384_bs16_90k/model_final_fa840f.pkl",
        {"PQ": 66.1, "AP": 42.8, "mIoU": 82.7}),
    "cityscapes/panoptic/swin_l": Release(
        M2F + "cityscapes/panoptic/maskformer2_swin_large_IN21k_384_bs16_90k/model_final_064788.pkl",
        {"PQ": 66.6, "AP": 43.6, "mIoU": 82.9}),
    "cityscapes/panoptic/dinat_l": Release(
        DINAT + "mask2former_dinat_large_cityscapes_panoptic.pth",
        {"PQ": 66.9, "AP": 43.8, "mIoU": 83.2}, paper={"PQ": 67.2}),
    "cityscapes/instance/r50": Release(
        M2F + "cityscapes/instance/maskformer2_R50_bs16_90k/model_final_01a8ed.pkl",
        {"AP": 37.4, "AP50": 61.9}),
    "cityscapes/instance/r101": Release(
        M2F + "cityscapes/instance/maskformer2_R101_bs16_90k/model_final_c2b8c8.pkl",
        {"AP": 38.5, "AP50": 63.9}),
    "cityscapes/instance/swin_t": Release(
        M2F + "cityscapes/instance/maskformer2_swin_tiny_bs16_90k/model_final_6a63f8.pkl",
        {"AP": 39.7, "AP50": 66.9}),
    "cityscapes/instance/swin_s": Release(
        M2F + "cityscapes/instance/maskformer2_swin_small_bs16_90k/model_final_974824.pkl",
        {"AP": 41.8, "AP50": 70.4}),
    "cityscapes/instance/swin_b_in21k": Release(
        M2F + "cityscapes/instance/maskformer2_swin_base_IN21k_384_bs16_90k/model_final_7a3b6d.pkl",
        {"AP": 42.0, "AP50": 68.8}),
    "cityscapes/instance/swin_l": Release(
        M2F + "cityscapes/instance/maskformer2_swin_large_IN21k_384_bs16_90k/model_final_dfa862.pkl",
        {"AP": 43.7, "AP50": 71.4}),
    "cityscapes/instance/dinat_l": Release(
        DINAT + "mask2former_dinat_large_cityscapes_instance.pth",
        {"AP": 44.5}, paper={"AP": 45.1}),
    "cityscapes/semantic/r50": Release(
        M2F + "cityscapes/semantic/maskformer2_R50_bs16_90k/model_final_cc1b1f.pkl",
        {"mIoU": 79.4, "mIoU (ms+flip)": 82.2}),
    "cityscapes/semantic/r101": Release(
        M2F + "cityscapes/semantic/maskformer2_R101_bs16_90k/model_final_257ce8.pkl",
        {"mIoU": 80.1, "mIoU (ms+flip)": 81.9}),
    "cityscapes/semantic/swin_t": Release(
        M2F + "cityscapes/semantic/maskformer2_swin_tiny_bs16_90k/model_final_2d58d4.pkl",
        {"mIoU": 82.1, "mIoU (ms+flip)": 83.0}),
    "cityscapes/semantic/swin_s": Release(
        M2F + "cityscapes/semantic/maskformer2_swin_small_bs16_90k/model_final_fa26ae.pkl",
        {"mIoU": 82.6, "mIoU (ms+flip)": 83.6}),
    "cityscapes/semantic/swin_b_in21k": Release(
        M2F + "cityscapes/semantic/maskformer2_swin_base_IN21k_384_bs16_90k/model_final_1c6b65.pkl",
        {"mIoU": 83.3, "mIoU (ms+flip)": 84.5}),
    "cityscapes/semantic/swin_l": Release(
        M2F + "cityscapes/semantic/maskformer2_swin_large_IN21k_384_bs16_90k/model_final_17c1ee.pkl",
        {"mIoU": 83.3, "mIoU (ms+flip)": 84.3}),
    "cityscapes/semantic/dinat_l": Release(
        DINAT + "mask2former_dinat_large_cityscapes_semantic.pth",
        {"mIoU (ms+flip)": 84.5}),
}
