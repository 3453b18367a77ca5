#!/usr/bin/env python
"""Train and evaluate DiNAT + Mask2Former (panoptic, instance, semantic) with detectron2.

    python train_net.py --config-file configs/synthetic/panoptic/dinat_mini.yaml
    python train_net.py --config-file configs/coco/panoptic/dinat_l.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file CONFIG --resume          # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file CONFIG --dataset my_data/shapes.yaml  # your own data (docs/CUSTOM_DATASETS.md)
    torchrun --nproc_per_node 8 train_net.py --config-file CONFIG  # processes started by torchrun / SLURM

``--num-gpus N`` starts N processes per machine: one per GPU over NCCL, or, with MODEL.DEVICE cpu (the
default where CUDA is unavailable), N CPU processes over gloo. Started by torchrun (RANK, WORLD_SIZE and
LOCAL_RANK set), each process joins the process group torchrun describes instead. ``--dist-timeout
MINUTES`` bounds how long the processes wait for a frozen peer in a collective before they stop.
``--eval-only`` needs weights (MODEL.WEIGHTS, or --resume with a checkpoint in OUTPUT_DIR) unless
``--allow-random-weights`` says that evaluating a randomly initialized model is intended.
``--dataset FILE`` (a dataset description, recorded in DATASETS.DESCRIPTIONS) trains on its train split, evaluates
on its val split and sets the class count; its files are checked before anything runs.
"""
from __future__ import annotations

import argparse
import logging
import os
import weakref
from collections import OrderedDict
from datetime import timedelta
from typing import Any, Dict, List

import torch

import dinat_m2f  # noqa: F401  (before detectron2: registers everything; dinat_m2f/startup.py says why first)
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer, TrainerBase, default_argument_parser, hooks
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.evaluation import DatasetEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from dinat_m2f.checkpoint import SafeDetectionCheckpointer
from dinat_m2f.config import load_project_config
from dinat_m2f.data import build_mapper, build_train_loader
from dinat_m2f.data.datasets import prepare_dataset_descriptions
from dinat_m2f.engine import (
    MixedPrecisionTrainer,
    ResumeStateHook,
    SemanticSegmentorWithTTA,
    autocast_dtype,
    build_lr_scheduler,
    build_optimizer,
    create_ddp_model,
    default_setup,
    launch,
    launch_from_environment,
    launches_rank_zero,
    lock_output_dir,
    preserved_rng_states,
    process_group_timeout,
    reuse_freed_memory,
    started_by_torchrun,
)
from dinat_m2f.evaluation import build_evaluator, check_ground_truth_files

logger = logging.getLogger("dinat_m2f")


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with Mask2Former's data, optimizer and schedules, the mixed-precision
    step of :class:`MixedPrecisionTrainer` (bfloat16/float16 on CUDA or CPU), CPU-capable DDP, a
    checkpointer that never executes code from a file and writes atomically, and exact resume: the data
    stream's position and the random states of every rank are saved with each checkpoint
    (:class:`ResumeStateHook`) and evaluation during training leaves the random states untouched."""

    def __init__(self, cfg: CfgNode) -> None:
        # DefaultTrainer.__init__ hard-codes AMPTrainer (CUDA, float16 only), a GPU-only DDP wrapper and
        # DetectionCheckpointer; this is the same construction with the project's pieces.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = MixedPrecisionTrainer(
            model,
            data_loader,
            optimizer,
            device_type=torch.device(cfg.MODEL.DEVICE).type,
            precision=autocast_dtype(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION),
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeDetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    def build_hooks(self) -> List[hooks.HookBase]:
        """detectron2's hooks, with the ResumeStateHook right before the checkpointer (on every rank: it
        gathers the ranks' states)."""
        hook_list = super().build_hooks()
        later = (hooks.PeriodicCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)
        position = next((i for i, h in enumerate(hook_list) if isinstance(h, later)), len(hook_list))
        hook_list.insert(position, ResumeStateHook(self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return hook_list

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume)
        resume_state = next(h for h in self._hooks if isinstance(h, ResumeStateHook))
        if self.start_iter > 0 and not resume_state.restored:
            logger.warning(
                "The checkpoint has no data position or random states (written before exact resume existed): "
                "the data order restarts from its beginning"
            )

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators: List[DatasetEvaluator] | None = None):
        """detectron2's test, after checking that every ground-truth file the evaluators of all
        DATASETS.TEST read exists (all missing files are listed at once, before any inference)."""
        if evaluators is None:
            evaluators = [cls.build_evaluator(cfg, name) for name in cfg.DATASETS.TEST]
        check_ground_truth_files(evaluators)
        with preserved_rng_states():  # evaluation during training must not change what training draws next
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: torch.nn.Module) -> Dict[str, Any]:
        """Evaluate the semantic output with TEST.AUG (multi-scale + flip); results keyed "<task>_TTA".

        Test-time augmentation averages per-class scores, so it covers semantic segmentation only; on a
        panoptic dataset it reports the mIoU of the derived semantic labels."""
        if not cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON:
            raise ValueError(
                "TEST.AUG.ENABLED needs MODEL.MASK_FORMER.TEST.SEMANTIC_ON True: "
                "test-time augmentation averages the semantic scores"
            )
        logger.info("Running inference with test-time augmentation ...")
        semantic_cfg = cfg.clone()
        semantic_cfg.defrost()
        semantic_cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
        semantic_cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
        semantic_cfg.freeze()
        evaluators = [
            cls.build_evaluator(semantic_cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, SemanticSegmentorWithTTA(cfg, model), evaluators)
        results = OrderedDict((name + "_TTA", value) for name, value in results.items())
        logger.info("Results with test-time augmentation are reported under %s", list(results))
        return results


def load_config(args) -> CfgNode:
    """--config-file and the command-line KEY VALUE pairs over the project's defaults, frozen
    (:func:`dinat_m2f.config.load_project_config`: plain YAML only, errors naming the file or key)."""
    cfg = load_project_config(args.config_file, args.opts, dataset_files=args.dataset)
    cfg.freeze()
    return cfg


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's arguments (--config-file, --eval-only, --resume, --num-gpus, ...) and this project's."""
    parser = default_argument_parser()
    parser.add_argument(
        "--dist-timeout", type=float, default=DEFAULT_TIMEOUT.total_seconds() / 60, metavar="MINUTES",
        help="how long the processes wait for a frozen peer in a collective before stopping (default: 30)",
    )
    parser.add_argument(
        "--allow-random-weights", action="store_true",
        help="with --eval-only: evaluate a randomly initialized model when no weights are given, on purpose",
    )
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="FILE",
        help="a dataset description file (YAML): train on its train split, evaluate on its val split",
    )
    return parser


def check_eval_only_weights(cfg: CfgNode, args) -> None:
    """--eval-only evaluates MODEL.WEIGHTS, or the last checkpoint with --resume; with neither, the model
    would be random, which is only right when asked for with --allow-random-weights."""
    resumable = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if args.eval_only and not cfg.MODEL.WEIGHTS and not resumable and not args.allow_random_weights:
        raise ValueError(
            "--eval-only needs weights: MODEL.WEIGHTS is empty (and there is no checkpoint to --resume from in "
            f"{cfg.OUTPUT_DIR}), so a randomly initialized model would be evaluated. Give MODEL.WEIGHTS "
            "path/or/URL/to/model.pth, or --allow-random-weights if that is what you want."
        )


def setup(args) -> CfgNode:
    cfg = load_config(args)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="dinat_m2f")
    logger.info("Running on %s with %d torch threads per process", cfg.MODEL.DEVICE, torch.get_num_threads())
    reuse_freed_memory()
    if comm.get_world_size() > 1:
        logger.info(
            "Process group: %s backend, world size %d, timeout %s",
            torch.distributed.get_backend(), comm.get_world_size(), process_group_timeout(),
        )
    return cfg


def main(args):
    cfg = setup(args)
    prepare_dataset_descriptions(cfg)  # described datasets' files are checked before anything is built
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SafeDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()


def invoke_main() -> None:
    args = argument_parser().parse_args()
    # Read the config here too: a bad key fails before any process starts, and the device decides the
    # process-group backend (NCCL for CUDA, gloo for CPU).
    cfg = load_config(args)
    check_eval_only_weights(cfg, args)
    if not args.eval_only and launches_rank_zero(args.machine_rank):
        lock_output_dir(cfg.OUTPUT_DIR)  # a second training in this OUTPUT_DIR stops here, naming the holder
    use_cuda = cfg.MODEL.DEVICE.startswith("cuda")
    timeout = timedelta(minutes=args.dist_timeout)
    if started_by_torchrun():
        if args.num_gpus != 1 or args.num_machines != 1:
            raise ValueError(
                f"Started by torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}): leave out --num-gpus and "
                "--num-machines, torchrun's --nproc_per_node and --nnodes set the processes"
            )
        launch_from_environment(main, args=(args,), use_cuda=use_cuda, timeout=timeout)
        return
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        use_cuda=use_cuda,
        timeout=timeout,
    )


if __name__ == "__main__":
    invoke_main()
