"""The training loader train_net.py builds (Trainer.build_train_loader) on the synthetic panoptic set: the
data order of detectron2's TrainingSampler, a new order per run with SEED -1, and a state that continues
the batches exactly (augmentation included) whatever the number of workers."""
import itertools

import pytest
import torch
from detectron2.data.samplers import TrainingSampler

from dinat_m2f.config import load_project_config
from dinat_m2f.data.datasets import SyntheticSpec, register_synthetic
from dinat_m2f.data.train_loader import SampleStream
from project_paths import CONFIGS, REPO, import_script

PREFIX = "loader_synthetic"


@pytest.fixture(scope="module")
def trainer_class(tmp_path_factory):
    register_synthetic(str(tmp_path_factory.mktemp("datasets")), SyntheticSpec(num_train=12, num_val=1, seed=3), PREFIX)
    return import_script(REPO / "train_net.py", "train_net").Trainer


def loader(trainer_class, seed=0, workers=0):
    cfg = load_project_config(str(CONFIGS / "synthetic" / "panoptic" / "dinat_mini.yaml"), [
        "DATASETS.TRAIN", f"('{PREFIX}_train_panoptic',)", "SEED", str(seed), "INPUT.IMAGE_SIZE", "64",
        "SOLVER.IMS_PER_BATCH", "3", "DATALOADER.NUM_WORKERS", str(workers),
    ])  # fmt: skip
    return trainer_class.build_train_loader(cfg)


def take(batches, count):
    """``count`` batches as (image ids, images): what the model would be given."""
    taken = list(itertools.islice(batches, count))
    return [[d["image_id"] for d in b] for b in taken], [torch.stack([d["image"] for d in b]) for b in taken]


def test_order_is_detectron2_training_samplers_from_any_position():
    stream = SampleStream(size=7, seed=11)
    expected = list(itertools.islice(iter(TrainingSampler(7, seed=11)), 40))
    assert list(itertools.islice(stream.indices_from(0), 40)) == expected
    assert list(itertools.islice(stream.indices_from(23), 17)) == expected[23:]


def test_seed_minus_one_gives_each_run_its_own_order(trainer_class):
    """detectron2 seeded its sampler with -1 itself: every run saw the same permutation."""
    orders = [take(iter(loader(trainer_class, seed=-1)), 4)[0] for _ in range(2)]
    assert orders[0] != orders[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_state_continues_the_exact_batches(trainer_class, workers):
    """After 3 batches (some samples waiting in an aspect-ratio bucket), a new loader given the state
    yields the batches the first one yields next, augmented identically, with 0 or 2 workers."""
    first = loader(trainer_class, seed=5, workers=workers)
    batches = iter(first)
    take(batches, 3)
    state = first.state_dict()
    expected_ids, expected_images = take(batches, 4)

    second = loader(trainer_class, seed=5, workers=2 - workers)
    second.load_state_dict(state)
    ids, images = take(iter(second), 4)
    assert ids == expected_ids
    assert all(torch.equal(a, b) for a, b in zip(images, expected_images))
    assert state["position"] == 11 and state["waiting"] == [[], [7, 9]]  # 2 samples wait in the w <= h bucket
