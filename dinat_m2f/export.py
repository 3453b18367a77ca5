"""The Mask2Former network as a deployable file, and exported files behind the model's interface.

What is exported is the network from the normalized, padded image to the head's outputs: input `image`
(1, 3, H, W) float32, outputs `pred_logits` (1, Q, K + 1) and `pred_masks` (1, Q, H/4, W/4): the backbone
(neighborhood attention through its `export` backend: standard operators only), the pixel decoder (its
deformable attention's sampling is grid_sample, ONNX GridSample) and the transformer decoder. Normalization,
padding and post-processing (`MaskFormerPostProcessor`, the model's own) stay in Python: `ExportedMaskFormer`
does them around an exported file, so it returns what `MaskFormer` returns.

One file serves one input size: the neighborhood-attention tiling plan (its tile classes and index tensors) is
made from H and W while exporting, and the backbone pads small maps by Python decisions on the size, so
torch.export cannot keep H and W symbolic. Images smaller than the exported size are zero-padded to it, which
is what MaskFormer does when that size is its own padded size (a multiple of SIZE_DIVISIBILITY).

Formats: ONNX (torch.onnx's dynamo exporter, opset ONNX_OPSET, weights as external data when over 2 GB,
checked with onnx.checker, run by ONNX Runtime); pt2 (torch.export's ExportedProgram, torch.export.save/load);
AOTInductor package (the ExportedProgram compiled ahead of time for the export device, a .pt2 that
torch._inductor.aoti_load_package runs).
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import nn
from torch.torch_version import TorchVersion

from .modeling.postprocessing import MaskFormerPostProcessor

__all__ = ["MaskFormerNetwork", "export_onnx", "export_pt2", "load_exported", "ExportedMaskFormer",
           "ImageTooLargeError", "INPUT_NAME", "OUTPUT_NAMES", "ONNX_OPSET"]

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("pred_logits", "pred_masks")
ONNX_OPSET = 20
# Written into AOTInductor packages, which do not keep their input shape in a readable form.
_AOTI_SIZE_KEY = "dinat_m2f_input_size"

Network = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class MaskFormerNetwork(nn.Module):
    """Backbone + segmentation head of a MaskFormer: (N, 3, H, W) normalized, padded images ->
    (pred_logits, pred_masks), the last decoder layer's outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        outputs = self.sem_seg_head(self.backbone(image))
        return outputs["pred_logits"], outputs["pred_masks"]


# torch 2.7.1's torch.export (also under torch.onnx's exporter) rejects the tiling plan's index tensors made
# while tracing ("references tensors that are neither buffers/parameters/constants"); torch 2.14 takes them
# as constants. Versions in between were not tried: 2.8 is the same assumed gate as the flex backend's.
MIN_EXPORT_TORCH = "2.8"


def export_unavailable() -> str | None:
    """Why this torch cannot export the network; None if it can."""
    if TorchVersion(torch.__version__) < MIN_EXPORT_TORCH:
        return f"exporting needs torch >= {MIN_EXPORT_TORCH}, this is torch {torch.__version__}"
    return None


def _example_input(model: nn.Module, size: Tuple[int, int]) -> Tuple[nn.Module, torch.Tensor]:
    if export_unavailable() is not None:
        raise RuntimeError(export_unavailable())
    network = MaskFormerNetwork(model).eval()
    device = next(model.parameters()).device
    return network, torch.zeros(1, 3, *size, device=device)


def export_onnx(model: nn.Module, size: Tuple[int, int], path: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Writes the network of `model` for (H, W) = `size` inputs to `path` (weights in `path`.data only when the
    file would pass ONNX's 2 GB protobuf limit) and checks it with onnx.checker."""
    import onnx

    network, example = _example_input(model, size)
    with torch.no_grad():
        program = torch.onnx.export(network, (example,), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                    opset_version=opset, dynamo=True)
    path = Path(path)
    program.save(path)  # external data only above 2 GB
    onnx.checker.check_model(str(path), full_check=True)  # a path: also for models with external data
    return path


def export_pt2(model: nn.Module, size: Tuple[int, int], path: str | Path, aoti: bool = False) -> Path:
    """Writes the network of `model` for (H, W) = `size` inputs to `path`: torch.export's ExportedProgram, or with
    `aoti` an AOTInductor package compiled for the model's device (a C++ compiler must be available)."""
    network, example = _example_input(model, size)
    with torch.no_grad():
        program = torch.export.export(network, (example,))
    path = Path(path)
    if aoti:
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(path),
            inductor_configs={"aot_inductor.metadata": {_AOTI_SIZE_KEY: f"{size[0]},{size[1]}"}})
    else:
        torch.export.save(program, path)
    return path


def _is_aoti_package(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any("/aotinductor/" in name for name in archive.namelist())


def load_exported(path: str | Path, threads: int | None = None) -> Tuple[Network, Tuple[int, int]]:
    """An exported file (.onnx, or a .pt2 ExportedProgram or AOTInductor package) as a function of the image
    tensor returning (pred_logits, pred_masks) on the CPU, and its input size (H, W). ONNX Runtime runs ONNX files
    on `threads` threads (default: torch's)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Exported model {path} does not exist (tools/export_model.py writes one)")
    if path.suffix == ".onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        size = tuple(session.get_inputs()[0].shape[2:])

        def run_onnx(image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.cpu().numpy()})
            return tuple(torch.from_numpy(o) for o in outputs)

        return run_onnx, size
    if path.suffix != ".pt2":
        raise ValueError(f"Exported model {path}: expected a .onnx or .pt2 file")
    if _is_aoti_package(path):
        runner = torch._inductor.aoti_load_package(str(path))
        height, width = runner.get_metadata()[_AOTI_SIZE_KEY].split(",")
        return (lambda image: tuple(runner(image))), (int(height), int(width))
    program = torch.export.load(path)
    (image_node,) = [node for node in program.graph.nodes if node.name in program.graph_signature.user_inputs]
    module = program.module()
    return (lambda image: tuple(module(image))), tuple(image_node.meta["val"].shape[2:])


class ImageTooLargeError(ValueError):
    """An image larger than the size an exported network was made for (after the config's test resize)."""


class ExportedMaskFormer:
    """An exported network with MaskFormer's interface: a list of dataset-mapper style inputs ("image" (C, H, W)
    in INPUT.FORMAT order, optional "height", "width") -> per image the results MaskFormer returns. Images are
    normalized with MODEL.PIXEL_MEAN/STD, zero-padded to the exported size and post-processed by the model's
    MaskFormerPostProcessor."""

    def __init__(self, path: str | Path, cfg: CfgNode, threads: int | None = None):
        self.path = Path(path)
        self.network, self.input_size = load_exported(path, threads)
        self.postprocessor = MaskFormerPostProcessor(cfg)
        self.pixel_mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
        self.pixel_std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)

    def __call__(self, batched_inputs: List[dict]) -> List[dict]:
        results = []
        for item in batched_inputs:  # an exported network takes one image
            image = (item["image"].cpu() - self.pixel_mean) / self.pixel_std
            height, width = image.shape[-2:]
            padded_h, padded_w = self.input_size
            if height > padded_h or width > padded_w:
                raise ImageTooLargeError(
                    f"An image of {height}x{width} (after the config's test resize) does not fit {self.path}, "
                    f"exported for {padded_h}x{padded_w}: export it for a larger --size")
            padded = F.pad(image, (0, padded_w - width, 0, padded_h - height))[None]
            with torch.no_grad():
                pred_logits, pred_masks = self.network(padded)
            output_size = (item.get("height", height), item.get("width", width))
            results += self.postprocessor(pred_logits, pred_masks, [(height, width)], [output_size],
                                          (padded_h, padded_w))
        return results
