"""train_net.py --dataset FILE end to end, one short run per format on generated data (category ids 42, 7, 1001,
3, 500; grayscale, RGBA, 16-bit, non-ASCII and spaced file names): a few iterations, the evaluation after them
with per-class metrics under the dataset's class names, fine-tuning from weights of another class count, the
demo with --dataset, and broken data refused before training with nothing written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from custom_dataset_files import make_dataset, split_paths
from detectron2.modeling import build_model
from dinat_m2f.config import load_project_config
from project_paths import CONFIGS, REPO
from test_train import TINY, read_metrics, run_train_net

# TINY without its DATASETS.TEST "()": these runs evaluate on the description's val split.
TINY_WITH_EVAL = [v for i, pair in enumerate(zip(TINY[0::2], TINY[1::2])) if pair[0] != "DATASETS.TEST" for v in pair]
SEMANTIC_SIZES = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.SIZE_DIVISIBILITY", "64"]
CLASS_NAMES = ["circle", "square", "triangle", "sky", "grass"]


def config(task):
    return CONFIGS / "synthetic" / task / "dinat_mini.yaml"


def final_metrics(output_dir):
    return {k: v for line in read_metrics(output_dir) for k, v in line.items()}


def test_panoptic_dataset_trains_evaluates_and_the_demo_names_its_classes(tmp_path):
    description = make_dataset(tmp_path / "my data", "coco_panoptic")
    out = tmp_path / "run"
    _, log = run_train_net(tmp_path / "datasets", "--dataset", str(description), *TINY_WITH_EVAL,
                           "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out), config=config("panoptic"))  # fmt: skip
    assert f"Dataset shapes ({description}, coco_panoptic): 5 classes (circle, square, triangle, sky, grass)" in log
    assert "Dataset shapes, split train: 6 samples checked" in log and "split val: 3 samples checked" in log
    assert "Evaluation results for shapes_val" in log
    metrics = final_metrics(out)
    assert "panoptic_seg/PQ" in metrics
    assert {f"segm/AP-{name}" for name in CLASS_NAMES[:3]} <= metrics.keys()
    assert {f"sem_seg/IoU-{name}" for name in CLASS_NAMES} <= metrics.keys()
    assert str(description) in (out / "config.yaml").read_text()  # DATASETS.DESCRIPTIONS reproduces the run

    # the demo, told the dataset, writes results with its category ids; the 16-bit photo is not read white
    sixteen_bit = split_paths(description)["images"] / "sixteen bit.png"
    demo_out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, str(REPO / "demo" / "demo.py"), "--config-file", str(config("panoptic")),
         "--dataset", str(description), "--input", str(sixteen_bit), "--output", str(demo_out),
         "--opts", *TINY_WITH_EVAL, "MODEL.WEIGHTS", str(out / "model_final.pth"),
         "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0", "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    panoptic = json.loads((demo_out / "sixteen bit_panoptic.json").read_text())
    assert {s["category_id"] for s in panoptic["segments_info"]} <= {42, 7, 1001, 3, 500}
    assert np.asarray(Image.open(demo_out / "sixteen bit.png").convert("L")).mean() < 220


def test_instance_dataset_fine_tunes_from_weights_of_another_class_count(tmp_path):
    """Weights of the 5-class synthetic panoptic model into a 3-class instance model: the class head starts
    fresh and the log names its parameters."""
    cfg = load_project_config(str(config("panoptic")), TINY)
    torch.manual_seed(0)
    weights = tmp_path / "five_classes.pth"
    torch.save({"model": build_model(cfg).state_dict(), "iteration": 0}, weights)

    description = make_dataset(tmp_path / "data", "coco_instances")
    out = tmp_path / "run"
    _, log = run_train_net(tmp_path / "datasets", "--dataset", str(description), *TINY_WITH_EVAL,
                           "MODEL.WEIGHTS", str(weights), "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out),
                           config=config("instance"))  # fmt: skip
    assert ("Fine-tuning from weights trained on 5 classes into a model of 3: the class head starts fresh "
            "(sem_seg_head.predictor.class_embed.weight (6, 32) -> (4, 32)") in log  # fmt: skip
    assert "criterion.empty_weight (6,) -> (4,)" in log and "Skip loading parameter" not in log
    assert {f"segm/AP-{name}" for name in CLASS_NAMES[:3]} <= final_metrics(out).keys()


def test_semantic_dataset_trains_and_evaluates_per_class_iou(tmp_path):
    description = make_dataset(tmp_path / "data", "semantic_masks")
    out = tmp_path / "run"
    _, log = run_train_net(tmp_path / "datasets", "--dataset", str(description), *TINY_WITH_EVAL, *SEMANTIC_SIZES,
                           "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out), config=config("semantic"))  # fmt: skip
    assert "copypaste: mIoU" in log
    assert {f"sem_seg/IoU-{name}" for name in CLASS_NAMES} <= final_metrics(out).keys()


def test_broken_dataset_is_refused_before_anything_runs(tmp_path):
    description = make_dataset(tmp_path / "data", "coco_panoptic", awkward=False)
    train = split_paths(description)
    content = json.loads(train["annotations"].read_text())
    (train["images"] / content["images"][0]["file_name"]).unlink()
    content["annotations"][1]["segments_info"].append({"id": 4242, "category_id": 7, "iscrowd": 0})
    train["annotations"].write_text(json.dumps(content))
    png = train["masks"] / content["annotations"][2]["file_name"]
    Image.fromarray(np.asarray(Image.open(png))[:-5]).save(png)

    out = tmp_path / "run"
    code, log = run_train_net(tmp_path / "datasets", "--dataset", str(description), *TINY_WITH_EVAL,
                              "OUTPUT_DIR", str(out), expect_ok=False, config=config("panoptic"))  # fmt: skip
    assert code != 0
    assert "cannot be trained or evaluated on; nothing was run: 3 problems" in log
    assert f"Cannot read image file {train['images'] / content['images'][0]['file_name']}" in log
    assert "segments_info ids [4242] of image id 2 are absent" in log
    assert f"Panoptic PNG {png} is" in log
    assert "Starting training" not in log and "Start inference" not in log
    assert not list(Path(out).glob("*.pth"))
