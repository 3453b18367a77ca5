"""The nine DiNAT-L configs: plain YAML, no unknown keys, the table of issue 3, and the model they build
(on the meta device: shapes without memory or time)."""

import re
from pathlib import Path

import pytest
import torch
import yaml
from detectron2.modeling import build_model

import dinat_m2f.data  # noqa: F401  (registers the datasets the configs name)
import dinat_m2f.maskformer_model  # noqa: F401  (registers the model)
import dinat_m2f.modeling.backbone.dinat  # noqa: F401
from dinat_m2f.config import load_project_config
from project_paths import CONFIGS, REPO, import_script


# config: (classes, queries, MAX_ITER, LR scheduler, mapper, (SEMANTIC_ON, INSTANCE_ON, PANOPTIC_ON))
TABLE = {
    "coco/panoptic": (133, 200, 737500, "WarmupMultiStepLR", "coco_panoptic_lsj", (True, True, True)),
    "coco/instance": (80, 200, 737500, "WarmupMultiStepLR", "coco_instance_lsj", (False, True, False)),
    "coco/semantic": (133, 100, 737500, "WarmupMultiStepLR", "mask_former_semantic", (True, False, False)),
    "ade20k/panoptic": (150, 200, 160000, "WarmupPolyLR", "mask_former_panoptic", (True, True, True)),
    "ade20k/instance": (100, 200, 160000, "WarmupPolyLR", "mask_former_instance", (False, True, False)),
    "ade20k/semantic": (150, 100, 160000, "WarmupPolyLR", "mask_former_semantic", (True, False, False)),
    "cityscapes/panoptic": (19, 200, 90000, "WarmupPolyLR", "mask_former_panoptic", (True, True, True)),
    "cityscapes/instance": (8, 200, 90000, "WarmupPolyLR", "mask_former_instance", (False, True, False)),
    "cityscapes/semantic": (19, 100, 90000, "WarmupPolyLR", "mask_former_semantic", (True, False, False)),
}
DINAT_L_PARAMETERS_COCO_PANOPTIC = 219_944_344


def load_cfg(name: str):
    return load_project_config(str(CONFIGS / name / "dinat_l.yaml"))  # raises on an unknown key


def build_on_meta(cfg):
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


# Keys in which a config for another backbone differs from the DiNAT-L one of its dataset and task.
BACKBONE_KEYS = ("MODEL.BACKBONE.NAME", "MODEL.DINAT", "MODEL.SHIFTVIT", "MODEL.WEIGHTS", "OUTPUT_DIR")


def without_backbone(cfg) -> dict:
    """Every key of `cfg` outside BACKBONE_KEYS, flat."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif not name.startswith(BACKBONE_KEYS):
                flat[name] = value

    walk(cfg, "")
    return flat


def load_backbone_config(name: str, backbone: str):
    """configs/`name`: plain YAML without unknown keys, the recipe of its folder's dinat_l.yaml (classes,
    queries, decoder layers, schedule, mapper) with `backbone` instead of D2DiNAT."""
    path = CONFIGS / name
    assert "!!python" not in path.read_text() and isinstance(yaml.safe_load(path.read_text()), dict)
    cfg = load_project_config(str(path))  # raises on an unknown key
    recipe = load_project_config(str(path.parent / "dinat_l.yaml"))
    for key in ("SEM_SEG_HEAD.NUM_CLASSES", "MASK_FORMER.NUM_OBJECT_QUERIES", "MASK_FORMER.DEC_LAYERS"):
        group, leaf = key.split(".")
        assert cfg.MODEL[group][leaf] == recipe.MODEL[group][leaf], key
    assert cfg.SOLVER.MAX_ITER == recipe.SOLVER.MAX_ITER and cfg.INPUT.DATASET_MAPPER_NAME == recipe.INPUT.DATASET_MAPPER_NAME
    assert cfg.MODEL.BACKBONE.NAME == backbone
    return cfg


def test_all_nine_configs_exist():
    found = sorted(str(p.parent.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*/dinat_l.yaml"))
    assert found == sorted(TABLE)


def test_configs_are_plain_yaml():
    files = [p for d in ("coco", "ade20k", "cityscapes") for p in (CONFIGS / d).rglob("*.yaml")]
    files.append(CONFIGS / "Base-Mask2Former-DiNAT-L.yaml")
    for path in files:
        assert "!!python" not in path.read_text(), path
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


@pytest.mark.parametrize("name", sorted(TABLE))
def test_config_merges_matches_the_table_and_builds(name):
    cfg = load_cfg(name)
    classes, queries, max_iter, scheduler, mapper, (semantic, instance, panoptic) = TABLE[name]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == classes
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == queries
    assert cfg.SOLVER.MAX_ITER == max_iter
    assert cfg.SOLVER.LR_SCHEDULER_NAME == scheduler
    assert cfg.INPUT.DATASET_MAPPER_NAME == mapper
    test = cfg.MODEL.MASK_FORMER.TEST
    assert (test.SEMANTIC_ON, test.INSTANCE_ON, test.PANOPTIC_ON) == (semantic, instance, panoptic)
    # shared by all nine
    assert cfg.MODEL.BACKBONE.NAME == "D2DiNAT"
    assert cfg.MODEL.DINAT.EMBED_DIM == 192 and cfg.MODEL.DINAT.KERNEL_SIZE == 11
    assert cfg.MODEL.DINAT.DEPTHS == [3, 4, 18, 5] and cfg.MODEL.DINAT.NUM_HEADS == [6, 12, 24, 48]
    assert [len(d) for d in cfg.MODEL.DINAT.DILATIONS] == cfg.MODEL.DINAT.DEPTHS
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10 and cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS == 6
    assert cfg.INPUT.FORMAT == "RGB"
    assert cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.PRECISION == "bfloat16"
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model" and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 1e-4 and cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1
    assert cfg.MODEL.WEIGHTS.endswith(".pkl")

    model = build_on_meta(cfg)
    assert model.sem_seg_head.predictor.class_embed.out_features == classes + 1
    assert model.sem_seg_head.predictor.query_feat.num_embeddings == queries
    assert len(model.sem_seg_head.predictor.transformer_cross_attention_layers) == 9


def test_coco_panoptic_dinat_l_has_the_original_parameter_count_and_names():
    model = build_on_meta(load_cfg("coco/panoptic"))
    assert sum(p.numel() for p in model.parameters()) == DINAT_L_PARAMETERS_COCO_PANOPTIC
    names = dict(model.named_parameters())
    assert names["sem_seg_head.pixel_decoder.adapter_1.norm.weight"].shape == (256,)
    assert names["sem_seg_head.predictor.mask_embed.layers.2.bias"].shape == (256,)
    assert names["sem_seg_head.predictor.class_embed.weight"].shape == (134, 256)
    assert names["sem_seg_head.pixel_decoder.transformer.encoder.layers.5.self_attn.sampling_offsets.weight"].shape == (
        192,
        256,
    )
    assert names["backbone.levels.2.blocks.17.attn.rpb"].shape == (24, 21, 21)
    assert "criterion.empty_weight" in model.state_dict()


def test_unknown_key_in_a_config_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f'_BASE_: "{CONFIGS / "coco/panoptic/dinat_l.yaml"}"\nMODEL:\n  MASK_FORMER:\n    NUM_QUERIES: 100\n')
    with pytest.raises(ValueError, match=r"bad\.yaml.*NUM_QUERIES"):
        load_project_config(str(path))


def import_file(name: str, path: Path):
    return import_script(path, name)


def entry_point_loaders():
    """How train_net.py, the demo and tools/analyze_model.py read --config-file (+ KEY VALUE pairs)."""
    train_net = import_file("train_net", REPO / "train_net.py")
    demo = import_file("demo", REPO / "demo" / "demo.py")
    analyze_model = import_file("analyze_model", REPO / "tools" / "analyze_model.py")

    def arguments(parser, config_file, opts, opts_flag=()):
        return parser.parse_args(["--config-file", config_file, *opts_flag, *opts])

    return {
        "train_net": lambda f, opts=(): train_net.load_config(arguments(train_net.argument_parser(), f, opts)),
        "demo": lambda f, opts=(): demo.setup_cfg(arguments(demo.get_parser(), f, opts, ["--opts"] if opts else [])),
        "analyze_model": lambda f, opts=(): analyze_model.load_cfg(f, list(opts)),
    }


RUNS_A_COMMAND = "!!python/object/apply:os.system ['touch {target}']"


@pytest.mark.parametrize("entry_point", ["train_net", "demo", "analyze_model"])
@pytest.mark.parametrize("in_base", [False, True], ids=["in_the_file", "in_its_base"])
def test_python_tags_are_refused_and_never_run(tmp_path, entry_point, in_base):
    """detectron2 falls back to yaml.unsafe_load: a config (or a _BASE_ it names) with a python tag ran the
    command. Every entry point refuses it with an error naming the file that has the tag, and the tag."""
    target = tmp_path / "touched_by_config"
    evil = tmp_path / ("evil_base.yaml" if in_base else "evil.yaml")
    evil.write_text(f'_BASE_: "{CONFIGS / "coco/panoptic/dinat_l.yaml"}"\nOUTPUT_DIR: {RUNS_A_COMMAND.format(target=target)}\n')
    config = evil
    if in_base:
        config = tmp_path / "innocent.yaml"
        config.write_text(f'_BASE_: "{evil}"\nSOLVER:\n  MAX_ITER: 10\n')
    with pytest.raises(ValueError) as error:
        entry_point_loaders()[entry_point](str(config))
    message = str(error.value)
    assert f"Config file {evil}, line 2" in message, message
    assert "tag:yaml.org,2002:python/object/apply:os.system" in message
    assert not target.exists()


def test_no_entry_point_reads_a_config_another_way():
    """The project's Python files read configs only through load_project_config."""
    readers = []
    for path in REPO.rglob("*.py"):
        if path == REPO / "dinat_m2f" / "config.py" or {".git", ".gpu_check"} & set(path.parts):  # not the copied detectron2
            continue
        if re.search(r"\.merge_from_file\(|load_yaml_with_base\(|yaml\.(unsafe_load|load)\(", path.read_text()):
            readers.append(str(path.relative_to(REPO)))
    assert readers == [], readers


@pytest.mark.parametrize("entry_point", ["train_net", "demo", "analyze_model"])
def test_a_type_mismatch_from_a_config_file_names_the_file(tmp_path, entry_point):
    config = tmp_path / "typo.yaml"
    config.write_text(f'_BASE_: "{CONFIGS / "coco/panoptic/dinat_l.yaml"}"\nMODEL:\n  DINAT:\n    KERNEL_SIZE: seven\n')
    with pytest.raises(ValueError, match=r"typo\.yaml.*MODEL\.DINAT\.KERNEL_SIZE"):
        entry_point_loaders()[entry_point](str(config))


@pytest.mark.parametrize("entry_point", ["train_net", "demo", "analyze_model"])
def test_input_format_is_checked_when_the_config_is_read(entry_point):
    with pytest.raises(ValueError, match=r"INPUT\.FORMAT 'L'.*RGB, BGR"):
        entry_point_loaders()[entry_point](str(CONFIGS / "coco/panoptic/dinat_l.yaml"), ["INPUT.FORMAT", "L"])
