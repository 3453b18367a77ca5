#!/usr/bin/env python
"""Train and evaluate DiNAT + Mask2Former (panoptic, instance, semantic) with detectron2.

    python train_net.py --config-file configs/synthetic/panoptic/dinat_mini.yaml
    python train_net.py --config-file configs/coco/panoptic/dinat_l.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file CONFIG --resume          # continue from OUTPUT_DIR/last_checkpoint

``--num-gpus N`` starts N processes per machine: one per GPU over NCCL, or, with MODEL.DEVICE cpu (the
default where CUDA is unavailable), N CPU processes over gloo.
"""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, TrainerBase, default_argument_parser, default_setup, hooks
from detectron2.evaluation import DatasetEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import dinat_m2f  # noqa: F401  (registers the backbone, heads, meta-architecture, datasets)
from dinat_m2f.checkpoint import SafeDetectionCheckpointer
from dinat_m2f.config import load_project_config
from dinat_m2f.data import build_mapper
from dinat_m2f.engine import (
    MixedPrecisionTrainer,
    SemanticSegmentorWithTTA,
    autocast_dtype,
    build_lr_scheduler,
    build_optimizer,
    create_ddp_model,
    launch,
)
from dinat_m2f.evaluation import build_evaluator

logger = logging.getLogger("dinat_m2f")


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with Mask2Former's data, optimizer and schedules, the mixed-precision
    step of :class:`MixedPrecisionTrainer` (bfloat16/float16 on CUDA or CPU), CPU-capable DDP and a
    checkpointer that never executes pickled code when loading."""

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
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)

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
    cfg = load_project_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def setup(args) -> CfgNode:
    cfg = load_config(args)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="dinat_m2f")
    logger.info("Running on %s with %d torch threads per process", cfg.MODEL.DEVICE, torch.get_num_threads())
    if comm.get_world_size() > 1:
        logger.info("Process group backend: %s", torch.distributed.get_backend())
    return cfg


def main(args):
    cfg = setup(args)
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
    args = default_argument_parser().parse_args()
    # Read the config here too: a bad key fails before any process starts, and the device decides the
    # process-group backend (NCCL for CUDA, gloo for CPU).
    cfg = load_config(args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        use_cuda=cfg.MODEL.DEVICE.startswith("cuda"),
    )


if __name__ == "__main__":
    invoke_main()
