"""The training data loader, resumable exactly.

detectron2's loader restarts its sampler's permutation from the beginning on every start (a job pre-empted
more often than once per epoch only ever saw the start of it), and with SEED -1 it shuffles with the seed
-1, the same permutation on every run. Its augmentation randomness lives in each worker's RNG, which a
checkpoint cannot hold. This loader:

- draws dataset indices in the order of detectron2's TrainingSampler for the same seed (one permutation
  per epoch from one generator), split across ranks the same way, and can start at any position;
- with SEED < 0 picks a seed at random on the first start (shared by all ranks) and saves it;
- seeds each sample's augmentation from (seed, its position in the stream), so a sample gets the same
  augmentation whichever worker maps it, however many workers there are, and after a resume;
- batches by aspect ratio like detectron2 (two buckets, w > h and w <= h) when
  DATALOADER.ASPECT_RATIO_GROUPING, keeping samples in stream order (one sample per worker in turn);
- reports its position and the samples waiting in the buckets (``state_dict``) and continues from them
  (``load_state_dict``): the batches after a resume are the ones the uninterrupted run would have seen.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetFromList, get_detection_dataset_dicts
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..engine.rng import seeded_rng

__all__ = ["ResumableTrainLoader", "SampleStream", "build_train_loader"]

logger = logging.getLogger(__name__)


class SampleStream:
    """The infinite sequence of dataset indices of detectron2's TrainingSampler(size, shuffle, seed),
    addressable by position: global position p holds permutation number p // size at offset p % size."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle

    def indices_from(self, position: int) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        epoch, offset = divmod(position, self.size)
        for _ in range(epoch):  # the permutations before `position`, drawn only to advance the generator
            self._permutation(generator)
        while True:
            yield from self._permutation(generator)[offset:]
            offset = 0

    def _permutation(self, generator: torch.Generator) -> List[int]:
        if self.shuffle:
            return torch.randperm(self.size, generator=generator).tolist()
        return list(range(self.size))


def _identity(sample: Any) -> Any:
    return sample


class _MappedSamples(IterableDataset):
    """(rank position, mapped dict) for a rank's positions from ``start``; each DataLoader worker maps
    every num_workers-th of them, so the loader yields them in order."""

    def __init__(self, loader: "ResumableTrainLoader", start: int):
        self.loader, self.start = loader, start

    def __iter__(self) -> Iterator[Tuple[int, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        positions = itertools.count(self.start)
        samples = zip(positions, self.loader.indices_from(self.start))
        for position, index in itertools.islice(samples, worker, None, workers):
            yield position, self.loader.map(position, index)


class ResumableTrainLoader:
    """Iterable of per-rank batches (lists of mapped dicts); see the module docstring.

    Args:
        dataset: the dataset dicts.
        mapper: dataset dict -> model input dict (None drops the sample).
        batch_size: images per batch on this rank.
        seed: the shuffling and augmentation seed, the same on every rank.
        num_workers: DataLoader worker processes.
        aspect_ratio_grouping: batch images with w > h and w <= h separately.
        shuffle: False keeps the dataset order (one epoch after the other).
    """

    def __init__(self, dataset: List[Dict], mapper: Callable[[Dict], Any], batch_size: int, seed: int,
                 num_workers: int = 0, aspect_ratio_grouping: bool = True, shuffle: bool = True):
        self.dataset = DatasetFromList(dataset, copy=False)
        self.mapper = mapper
        self.batch_size = batch_size
        self.stream = SampleStream(len(dataset), seed, shuffle)
        self.num_workers = num_workers
        self.num_buckets = 2 if aspect_ratio_grouping else 1
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.position = 0  # this rank's next position (it holds global position rank + position * world_size)
        self._buckets: List[List[Tuple[int, Any]]] = [[] for _ in range(self.num_buckets)]

    def indices_from(self, position: int) -> Iterator[int]:
        """Dataset indices of this rank's positions ``position``, ``position + 1``, ..."""
        global_indices = self.stream.indices_from(self.rank + position * self.world_size)
        return itertools.islice(global_indices, 0, None, self.world_size)

    def map(self, position: int, index: int) -> Any:
        global_position = self.rank + position * self.world_size
        with seeded_rng((self.stream.seed, global_position)):
            return self.mapper(self.dataset[index])

    def _bucket(self, sample: Dict) -> List[Tuple[int, Any]]:
        return self._buckets[int(sample["width"] <= sample["height"]) if self.num_buckets == 2 else 0]

    def __iter__(self) -> Iterator[List[Any]]:
        samples = DataLoader(
            _MappedSamples(self, self.position),
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            generator=torch.Generator(),  # the loader's seed draws must not advance the training RNG
        )
        for position, sample in samples:
            self.position = position + 1
            if sample is None:
                continue
            bucket = self._bucket(sample)
            bucket.append((position, sample))
            if len(bucket) == self.batch_size:
                batch = [s for _, s in bucket]
                bucket.clear()  # before yielding: the state seen between steps excludes the yielded batch
                yield batch

    def state_dict(self) -> Dict[str, Any]:
        return {
            "seed": self.stream.seed,
            "position": self.position,
            "waiting": [[position for position, _ in bucket] for bucket in self._buckets],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue where ``state`` was taken: same seed, same position, the same samples waiting (mapped
        again here, with the augmentation their positions give them)."""
        self.stream.seed = state["seed"]
        self.position = state["position"]
        self._buckets = [
            [(p, self.map(p, next(self.indices_from(p)))) for p in waiting] for waiting in state["waiting"]
        ]


def build_train_loader(cfg: CfgNode, mapper: Callable[[Dict], Any]) -> ResumableTrainLoader:
    """The training loader of DATASETS.TRAIN (empty-annotation filtering as detectron2), SOLVER.IMS_PER_BATCH
    split over the ranks, DATALOADER.NUM_WORKERS / ASPECT_RATIO_GROUPING, seeded by SEED (random if < 0)."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported: the resumable training "
            "loader implements 'TrainingSampler'"
        )
    if not cfg.DATASETS.TRAIN:
        raise ValueError(
            "DATASETS.TRAIN is empty: there is nothing to train on (a dataset description without a 'train' split "
            "sets none; --eval-only evaluates without it)"
        )
    world_size = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by the {world_size} processes"
        )
    dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    logger.info("Training data: %d images, seed %d%s", len(dataset), seed, " (SEED < 0: drawn now)" * (cfg.SEED < 0))
    return ResumableTrainLoader(
        dataset,
        mapper,
        batch_size=cfg.SOLVER.IMS_PER_BATCH // world_size,
        seed=seed,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
    )
