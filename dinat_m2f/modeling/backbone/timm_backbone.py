"""Any timm model with stride-4..32 features as a detectron2 backbone (ConvNeXt, EfficientNet, ResNet,
MaxViT, ...), without a hand-written copy.

timm is optional (``pip install .[timm]``): it is imported when a D2TimmBackbone is built, never when the
project is imported. The model is ``timm.create_model(MODEL.TIMM.NAME, features_only=True, ...)``; its
``feature_info`` says each output's stride, and the deepest output at strides 4, 8, 16 and 32 becomes
res2..res5 (a stride-2 stem output, say, is left out). A model without all four strides is refused, naming
its strides.

Weights: nothing is downloaded. ``MODEL.TIMM.PRETRAINED_PATH`` names a local file in timm's own layout
(timm's state_dict of the classification model, bare or under "state_dict" / "model"; ``.safetensors`` or a
torch file). It is read with the project's safe readers (no pickled code runs), its keys are checked
against the model (the classifier excepted) and the mismatches listed, and it is handed to timm's
``pretrained`` loading as an in-memory state_dict, so timm adapts it as it adapts its own downloads (its
checkpoint filter, the classifier dropped).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec

from ...checkpoint import read_safetensors_file, read_torch_file
from .base import FEATURE_NAMES, FEATURE_STRIDES, MultiScaleBackbone

__all__ = ["D2TimmBackbone", "import_timm", "read_timm_state_dict"]

logger = logging.getLogger(__name__)
# create_model arguments this wrapper sets itself.
_RESERVED_KWARGS = ("features_only", "pretrained", "out_indices", "pretrained_cfg_overlay", "in_chans")


def import_timm():
    """timm, or an ImportError that says how to install it."""
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            "MODEL.BACKBONE.NAME D2TimmBackbone needs timm, an optional dependency of dinat_m2f: install it with "
            "`pip install .[timm]` (or `pip install timm`)"
        ) from e
    return timm


def read_timm_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A timm checkpoint as a flat state_dict, read without executing pickled code: .safetensors, or a
    torch file holding the state_dict bare or under "state_dict" / "model"."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.TIMM.PRETRAINED_PATH {path} does not exist. Save the timm model's weights to a local file "
            "once (docs/BACKBONES.md, 'Any timm backbone'), point PRETRAINED_PATH at it, or set it to '' for random "
            "weights (e.g. when MODEL.WEIGHTS holds a trained model)"
        )
    if path.endswith(".safetensors"):
        return read_safetensors_file(path)["model"]
    loaded = read_torch_file(path)
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(
            f"MODEL.TIMM.PRETRAINED_PATH {path}: expected a state_dict of tensors (bare or under 'state_dict' "
            f"or 'model'), got {type(loaded).__name__}"
            + (f" with keys {sorted(loaded)[:8]}" if isinstance(loaded, dict) else "")
        )
    return loaded


def _check_state_dict(timm, name: str, path: str, state_dict: dict[str, torch.Tensor], kwargs: dict) -> None:
    """Compare the checkpoint with the classification model's keys and shapes (built on the meta device,
    without its classifier); raise listing what is missing, unexpected or of another shape."""
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False, **kwargs)
    classifier = reference.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)

    def is_classifier(key: str) -> bool:
        return any(key.startswith(c + ".") for c in classifier)

    expected = {k: v.shape for k, v in reference.state_dict().items() if not is_classifier(k)}
    given = {k: v.shape for k, v in state_dict.items() if not is_classifier(k)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(f"{k} {tuple(given[k])} (model: {tuple(expected[k])})"
                   for k in set(given) & set(expected) if given[k] != expected[k])
    if missing or unexpected or wrong:
        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")

        problems = [f"{what}: {listing(keys)}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ValueError(f"MODEL.TIMM.PRETRAINED_PATH {path} does not fit timm model {name!r} (timm's own "
                         "state_dict layout is expected): " + "; ".join(problems))


def _feature_channels_last(model) -> bool:
    """Whether the features come out NHWC (timm's Swin-style models report output_fmt NHWC)."""
    return str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")


@BACKBONE_REGISTRY.register()
class D2TimmBackbone(MultiScaleBackbone):
    """A timm feature extractor (MODEL.TIMM.*) with this project's backbone contract; see the module docstring.

    timm models need sizes of various multiples (ConvNeXt's 4x4 stem and 2x2 downsamplers drop a remainder):
    inputs are padded to a multiple of 32 and the features cropped back to ceil(H / stride), as for every
    backbone. Activation checkpointing is timm's own (`set_grad_checkpointing`: the model's stages or blocks)."""

    input_multiple = 32

    @configurable
    def __init__(self, *, name: str, pretrained_path: str = "", out_indices: Sequence[int] = (),
                 in_chans: int = 3, activation_checkpointing: bool = False, **kwargs: Any):
        super().__init__()
        if not name:
            raise ValueError("MODEL.TIMM.NAME is empty: name a timm model, e.g. convnext_tiny")
        reserved = [k for k in kwargs if k in _RESERVED_KWARGS]
        if reserved:
            raise ValueError(f"MODEL.TIMM.KWARGS must not set {reserved}: D2TimmBackbone sets them itself")
        timm = import_timm()
        if not timm.is_model(name):
            raise ValueError(f"MODEL.TIMM.NAME {name!r} is not a timm model (timm {timm.__version__})")
        create_kwargs = dict(kwargs, in_chans=in_chans)
        if out_indices:
            create_kwargs["out_indices"] = tuple(out_indices)
        if pretrained_path:
            state_dict = read_timm_state_dict(pretrained_path)
            _check_state_dict(timm, name, pretrained_path, state_dict, dict(kwargs, in_chans=in_chans))
            # timm's own pretrained path with the weights in memory: every download source blanked.
            overlay = dict(state_dict=state_dict, file=None, url=None, hf_hub_id=None, source=None)
            self.model = timm.create_model(name, features_only=True, pretrained=True,
                                           pretrained_cfg_overlay=overlay, **create_kwargs)
            logger.info(f"D2TimmBackbone {name}: loaded {len(state_dict)} tensors from {pretrained_path}")
        else:
            self.model = timm.create_model(name, features_only=True, pretrained=False, **create_kwargs)

        strides = list(self.model.feature_info.reduction())
        channels = list(self.model.feature_info.channels())
        missing = [s for s in FEATURE_STRIDES if s not in strides]
        if missing:
            raise ValueError(
                f"timm model {name!r} has no features at stride(s) {missing} (its features_only outputs have "
                f"strides {strides}{f' for OUT_INDICES {list(out_indices)}' if out_indices else ''}); "
                "D2TimmBackbone needs strides 4, 8, 16 and 32 for res2..res5"
            )
        # Position of the deepest output at each stride (the last one timm lists).
        self._positions = {name_: max(i for i, s in enumerate(strides) if s == stride)
                           for name_, stride in zip(FEATURE_NAMES, FEATURE_STRIDES)}
        self._channels_last = _feature_channels_last(self.model)
        self._set_outputs(range(len(FEATURE_NAMES)), [channels[self._positions[n]] for n in FEATURE_NAMES])
        self.activation_checkpointing = activation_checkpointing

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        c = cfg.MODEL.TIMM
        return dict(name=c.NAME, pretrained_path=c.PRETRAINED_PATH, out_indices=c.OUT_INDICES,
                    in_chans=input_shape.channels,
                    activation_checkpointing=cfg.MODEL.BACKBONE.ACTIVATION_CHECKPOINTING, **dict(c.KWARGS))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.model(x)
        outputs = {}
        for name in FEATURE_NAMES:
            feature = features[self._positions[name]]
            outputs[name] = feature.permute(0, 3, 1, 2).contiguous() if self._channels_last else feature
        return outputs

    def _apply_activation_checkpointing(self, enabled: bool) -> None:
        if not hasattr(self.model, "set_grad_checkpointing"):
            if enabled:
                raise ValueError(f"MODEL.BACKBONE.ACTIVATION_CHECKPOINTING: timm's {type(self.model).__name__} "
                                 "has no set_grad_checkpointing")
            return
        self.model.set_grad_checkpointing(enabled)
