"""Config keys of the original Mask2Former and DiNAT projects, with their defaults.

Key names and defaults are part of the contract: released configs and users' YAML files rely on them.
Keys this project adds (``SOLVER.AMP.PRECISION``, ``MODEL.DINAT.LAYER_SCALE``, ...) are additions only.
Every entry point reads its config with :func:`load_project_config` (plain YAML only, checked values).
"""
import logging
import re
from typing import Sequence

import torch
import yaml
from detectron2.config import CfgNode as CN

from .config_files import ConfigFileError, check_config_files
from .config_values import check_config_values


def add_maskformer2_config(cfg: CN) -> None:
    """Add the keys of Mask2Former (and of DeepLab, whose config Mask2Former's trainer also adds)."""
    # data
    # Addition: dataset description files (docs/CUSTOM_DATASETS.md); their splits set DATASETS.TRAIN / TEST and
    # MODEL.SEM_SEG_HEAD.NUM_CLASSES when the config is loaded (train_net.py --dataset FILE appends here).
    cfg.DATASETS.DESCRIPTIONS = []
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    # Random crops are retried until no single category covers more than this part of the crop.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Pad image and segmentation GT in the dataset mapper (-1: no padding there).
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # large-scale jitter (LSJ)
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0

    # solver
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # Addition: autocast dtype used when SOLVER.AMP.ENABLED ("bfloat16" needs no GradScaler).
    cfg.SOLVER.AMP.PRECISION = "bfloat16"

    # Addition: every backbone recomputes its blocks' activations in the backward instead of keeping them
    # (MODEL.SWIN.USE_CHECKPOINT and MODEL.HRVIT.WITH_CP turn it on too, for their backbone).
    cfg.MODEL.BACKBONE.ACTIVATION_CHECKPOINTING = False

    # Additions: torch.compile these MaskFormer submodules in place (Module.compile: parameter names unchanged),
    # and conv weights channels-last. Both off: on the 2-core CPU of docs/PERFORMANCE.md neither paid.
    cfg.MODEL.COMPILE = CN()
    cfg.MODEL.COMPILE.ENABLED = False
    cfg.MODEL.COMPILE.MODULES = ["backbone", "sem_seg_head"]
    cfg.MODEL.COMPILE.BACKEND = "inductor"
    cfg.MODEL.COMPILE.MODE = "default"
    cfg.MODEL.CHANNELS_LAST = False

    # mask former: loss
    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0
    # mask former: transformer
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    # mask former: inference
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # Overrides the backbone's size_divisibility when the backbone reports 0.
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # mask former: point-sampled losses
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75

    # pixel decoder
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # DeepLab keys (Mask2Former's trainer adds them; released configs may carry them)
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE = "hard_pixel_mining"
    cfg.MODEL.SEM_SEG_HEAD.PROJECT_FEATURES = ["res2"]
    cfg.MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS = [48]
    cfg.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS = 256
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [6, 12, 18]
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT = 0.1
    cfg.MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV = False
    cfg.MODEL.RESNETS.RES4_DILATION = 1
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]
    cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"

    # Swin backbone keys of Mask2Former (kept so its configs merge)
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.QK_SCALE = None
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.APE = False
    cfg.MODEL.SWIN.PATCH_NORM = True
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SWIN.USE_CHECKPOINT = False  # MODEL.BACKBONE.ACTIVATION_CHECKPOINTING for this backbone


def add_dinat_config(cfg: CN) -> None:
    """Add the ``MODEL.DINAT`` keys of the original DiNAT Mask2Former project (DiNAT-L defaults)."""
    cfg.MODEL.DINAT = CN()
    cfg.MODEL.DINAT.EMBED_DIM = 192
    cfg.MODEL.DINAT.DEPTHS = [3, 4, 18, 5]
    cfg.MODEL.DINAT.NUM_HEADS = [6, 12, 24, 48]
    cfg.MODEL.DINAT.KERNEL_SIZE = 7
    # One list per level, one dilation per block; None means 1 everywhere.
    cfg.MODEL.DINAT.DILATIONS = None
    cfg.MODEL.DINAT.MLP_RATIO = 2.0
    cfg.MODEL.DINAT.QKV_BIAS = True
    cfg.MODEL.DINAT.QK_SCALE = None
    cfg.MODEL.DINAT.DROP_RATE = 0.0
    cfg.MODEL.DINAT.ATTN_DROP_RATE = 0.0
    cfg.MODEL.DINAT.DROP_PATH_RATE = 0.3
    cfg.MODEL.DINAT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Additions: layer scale init (None: off) and the number of frozen stages (-1: none).
    cfg.MODEL.DINAT.LAYER_SCALE = None
    cfg.MODEL.DINAT.FROZEN_STAGES = -1


def add_coatnet_config(cfg: CN) -> None:
    """Add the ``MODEL.COATNET`` keys of the CoAtNet backbone (timm's layouts; CoAtNet-0 rw defaults)."""
    cfg.MODEL.COATNET = CN()
    # A name of dinat_m2f.modeling.backbone.coatnet.VARIANTS: block flags and layout.
    cfg.MODEL.COATNET.VARIANT = "coatnet_0_rw_224"
    # Replace the variant's layout (empty / 0: keep the variant's).
    cfg.MODEL.COATNET.EMBED_DIM = []
    cfg.MODEL.COATNET.DEPTHS = []
    cfg.MODEL.COATNET.STEM_WIDTH = []
    cfg.MODEL.COATNET.DIM_HEAD = 0
    # Image size (H, W) the relative-position tables were trained at (empty: the variant's, 224x224).
    cfg.MODEL.COATNET.PRETRAIN_IMG_SIZE = []
    cfg.MODEL.COATNET.DROP_PATH_RATE = 0.0
    # Attention window in tokens at stride 16 (half as many at stride 32) for maps larger than it; 0: global.
    cfg.MODEL.COATNET.ATTN_WINDOW = 0
    cfg.MODEL.COATNET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def add_hrvit_config(cfg: CN) -> None:
    """Add the ``MODEL.HRVIT`` keys (this project's; the reference has no detectron2 config). A layout key left
    at None takes VARIANT's value; with VARIANT "" every layout key must be set."""
    cfg.MODEL.HRVIT = CN()
    cfg.MODEL.HRVIT.VARIANT = "hrvit_b3"  # hrvit_b1, hrvit_b2, hrvit_b3 or ""
    cfg.MODEL.HRVIT.CHANNELS = None  # stem width
    cfg.MODEL.HRVIT.CHANNEL_LIST = None  # per module, one width per branch
    cfg.MODEL.HRVIT.BLOCK_LIST = None  # per module, one block count per branch
    cfg.MODEL.HRVIT.DIM_HEAD = None
    cfg.MODEL.HRVIT.WS_LIST = None  # stripe width per branch
    cfg.MODEL.HRVIT.MLP_RATIO_LIST = None  # MixCFN ratio per branch
    cfg.MODEL.HRVIT.DROP_PATH_RATE = 0.1
    # BN, SyncBN or FrozenBN (detectron2's get_norm names) for the stem, fusion and attention BatchNorms.
    cfg.MODEL.HRVIT.NORM = "SyncBN"
    cfg.MODEL.HRVIT.WITH_CP = False  # MODEL.BACKBONE.ACTIVATION_CHECKPOINTING for this backbone
    cfg.MODEL.HRVIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def add_lavit_config(cfg: CN) -> None:
    """Add the ``MODEL.LAVIT`` keys of this project's LaViT backbone (no reference exists: defaults are
    this project's LaViT-T, ``dinat_m2f.modeling.backbone.lavit``)."""
    cfg.MODEL.LAVIT = CN()
    cfg.MODEL.LAVIT.EMBED_DIM = 96
    cfg.MODEL.LAVIT.DEPTHS = [2, 2, 6, 2]
    # The first VA_DEPTHS[m] layers of stage m are vanilla attention, the rest less-attention layers.
    cfg.MODEL.LAVIT.VA_DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.LAVIT.NUM_HEADS = [3, 6, 12, 24]
    cfg.MODEL.LAVIT.PATCH_SIZE = 4
    # Attention inside fixed WINDOW_SIZE x WINDOW_SIZE windows at every stage (any input size) ...
    cfg.MODEL.LAVIT.WINDOW_SIZE = 8
    # ... or the paper's global form: each stage's window is its whole map at PRETRAIN_IMG_SIZE.
    cfg.MODEL.LAVIT.GLOBAL_ATTENTION = False
    cfg.MODEL.LAVIT.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.LAVIT.MLP_RATIO = 4.0
    cfg.MODEL.LAVIT.QKV_BIAS = True
    cfg.MODEL.LAVIT.DROP_PATH_RATE = 0.2
    # Initial LayerScale of the attention residual between stages.
    cfg.MODEL.LAVIT.AR_LAYER_SCALE = 0.1
    # Weight of the diagonality-preserving loss (loss_lavit_dp, summed over LA layers); 0 turns it off.
    cfg.MODEL.LAVIT.DP_LOSS_WEIGHT = 1.0
    cfg.MODEL.LAVIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def add_timm_config(cfg: CN) -> None:
    """Add the ``MODEL.TIMM`` keys of the generic timm backbone ``D2TimmBackbone`` (needs ``pip install .[timm]``)."""
    cfg.MODEL.TIMM = CN()
    # timm model name, e.g. "convnext_large"; built with features_only=True and random weights ...
    cfg.MODEL.TIMM.NAME = ""
    # ... then loaded from this local file (timm's layout: a state_dict, or one under "state_dict"/"model";
    # .pth/.pt/.bin or .safetensors); "" keeps the random weights. Nothing is ever downloaded.
    cfg.MODEL.TIMM.PRETRAINED_PATH = ""
    # timm's out_indices; [] takes timm's default. The deepest feature at each stride 4, 8, 16, 32 becomes
    # res2..res5.
    cfg.MODEL.TIMM.OUT_INDICES = []
    # Further keyword arguments of timm.create_model (plain values, e.g. drop_path_rate: 0.3).
    cfg.MODEL.TIMM.KWARGS = CN(new_allowed=True)


def add_shiftvit_config(cfg: CN) -> None:
    """Add the ``MODEL.SHIFTVIT`` keys of the ShiftViT backbone (D2ShiftViT; defaults: Shift-T, shiftvit_r2_tiny)."""
    cfg.MODEL.SHIFTVIT = CN()
    cfg.MODEL.SHIFTVIT.EMBED_DIM = 96
    cfg.MODEL.SHIFTVIT.DEPTHS = [6, 8, 18, 6]
    cfg.MODEL.SHIFTVIT.MLP_RATIO = 2.0
    # C // N_DIV channels are shifted in each of the four directions.
    cfg.MODEL.SHIFTVIT.N_DIV = 12
    cfg.MODEL.SHIFTVIT.DROP_PATH_RATE = 0.3
    # "GN1" (GroupNorm with one group, the reference's default) or "BN"
    cfg.MODEL.SHIFTVIT.NORM = "GN1"
    cfg.MODEL.SHIFTVIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def get_project_cfg() -> CN:
    """detectron2's defaults plus every key of this project."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_dinat_config(cfg)
    add_coatnet_config(cfg)
    add_maskformer2_config(cfg)
    add_hrvit_config(cfg)
    add_lavit_config(cfg)
    add_timm_config(cfg)
    add_shiftvit_config(cfg)
    return cfg


# Channel orders the project's image pipeline handles (uint8 images, PIXEL_MEAN/PIXEL_STD per channel).
INPUT_FORMATS = ("RGB", "BGR")


def _yaml_error_message(config_file: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}" if mark is not None else config_file
    tag = re.search(r"tag '([^']*)'", str(getattr(error, "problem", "")))
    if tag and "python/" in tag.group(1):
        return (
            f"Config file {where}: the YAML tag '{tag.group(1)}' is refused: python tags construct Python "
            "objects (they can run code); configs are plain YAML"
        )
    return f"Config file {where}: invalid YAML: {error}"


def load_project_config(config_file: str, opts: Sequence[str] = (), dataset_files: Sequence[str] = ()) -> CN:
    """The project's defaults, then ``config_file`` (with its ``_BASE_`` files), then the command-line
    KEY VALUE pairs ``opts``, then the dataset description files ``dataset_files`` (``--dataset``) added to
    DATASETS.DESCRIPTIONS, whose datasets are registered and set the datasets and class count
    (:func:`dinat_m2f.data.datasets.apply_dataset_descriptions`): the config loader of train_net.py, the demo
    and the tools.

    YAML is read with ``yaml.safe_load`` (detectron2 falls back to ``yaml.unsafe_load``, which runs python
    tags): a python tag in any of the files is a ValueError naming that file and the tag. Files that are not
    mappings, alias bombs and _BASE_ cycles are refused first (:mod:`.config_files`), and values out of range
    are listed, all at once (:mod:`.config_values`). An unknown key, a value of the wrong type or a missing
    file is a ValueError naming where it came from; INPUT.FORMAT must be one of INPUT_FORMATS. MODEL.DEVICE
    "cuda" falls back to "cpu" on a machine without CUDA, so the synthetic configs run on a laptop unchanged.
    Returns an unfrozen config.
    """
    cfg = get_project_cfg()
    try:
        check_config_files(config_file)
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except ConfigFileError:
        raise
    except yaml.YAMLError as error:
        raise ValueError(_yaml_error_message(config_file, error)) from error
    except (KeyError, AssertionError, ValueError, TypeError) as error:
        raise ValueError(f"Config file {config_file} (or its _BASE_ files): {error}") from error
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError) as error:
        raise ValueError(f"Command-line config options: {error}") from error
    if cfg.INPUT.FORMAT not in INPUT_FORMATS:
        raise ValueError(
            f"INPUT.FORMAT {cfg.INPUT.FORMAT!r} (from {config_file} or the command line) is not supported: "
            f"use one of {', '.join(INPUT_FORMATS)}, the channel order PIXEL_MEAN and PIXEL_STD are given in"
        )
    check_config_values(cfg, f"{config_file} (with its _BASE_ files and the command line)")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).info("CUDA is not available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    from .data.datasets import apply_dataset_descriptions  # the data package imports detectron2's datasets

    cfg.DATASETS.DESCRIPTIONS = list(cfg.DATASETS.DESCRIPTIONS) + list(dataset_files)
    apply_dataset_descriptions(cfg, opts)
    return cfg
