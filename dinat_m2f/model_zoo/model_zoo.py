"""Models by name, as detectron2.model_zoo: a name is a config path under configs/ without ".yaml"
("coco/panoptic/dinat_l", "ade20k/semantic/swin_b_in21k", "synthetic/panoptic/dinat_mini"). Every config of
the repository is a model of the zoo; those with a released checkpoint (`RELEASES`) also have its URL and
published metrics.

The configs ship inside the installed package (setup.py maps configs/ to dinat_m2f/model_zoo/configs); a source
checkout (or an editable install) reads the repository's configs/ folder."""
import difflib
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

from ..checkpoint import SafeDetectionCheckpointer
from ..checkpoint.files import is_url
from ..config import load_project_config
from .releases import RELEASES, Release

__all__ = ["configs_root", "get", "get_checkpoint_url", "get_config", "get_config_file", "get_metrics",
           "get_release", "list_models"]

# configs/ files that only hold settings other configs include (_BASE_), never a model of their own
_BASE_PREFIX = "Base-"


def configs_root() -> Path:
    """The folder the zoo's configs are read from: the installed package's copy, else the source checkout's."""
    packaged = Path(__file__).with_name("configs")
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"The model zoo's configs are neither in {packaged} (an installed package) nor in "
                            f"{checkout} (a source checkout): reinstall dinat_m2f with `pip install .`")


def list_models() -> List[str]:
    """The names of every model of the zoo (every config of the repository), sorted."""
    root = configs_root()
    return sorted(
        path.relative_to(root).with_suffix("").as_posix()
        for path in root.rglob("*.yaml")
        if not path.name.startswith(_BASE_PREFIX)
    )


def _check_name(name: str) -> None:
    names = list_models()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(n) for n in close)}?" if close else ""
    raise ValueError(f"No model {name!r} in the model zoo{hint} (dinat_m2f.model_zoo.list_models() lists all "
                     f"{len(names)}: config paths under configs/ without '.yaml', e.g. 'coco/panoptic/dinat_l')")


def get_config_file(name: str) -> str:
    """The path of the model's config file."""
    _check_name(name)
    return str(configs_root() / f"{name}.yaml")


def get_release(name: str) -> Release:
    """The model's released checkpoint (URL, published metrics, the paper's where they differ)."""
    _check_name(name)
    if name not in RELEASES:
        released = sorted(n for n in RELEASES if n.rsplit("/", 1)[0] == name.rsplit("/", 1)[0])
        others = f" (released for this dataset and task: {', '.join(released)})" if released else ""
        raise ValueError(f"{name} has no released checkpoint{others}: train it with train_net.py --config-file "
                         f"{get_config_file(name)}, or pass the weights of your own")
    return RELEASES[name]


def get_checkpoint_url(name: str) -> str:
    """The URL of the model's released checkpoint (a ValueError for models without one)."""
    return get_release(name).url


def get_metrics(name: str) -> Dict[str, float]:
    """The published metrics of the model's released checkpoint, e.g. {"PQ": 58.2, "AP": 49.2, "mIoU": 68.1}."""
    return dict(get_release(name).metrics)


def get_config(name: str, trained: bool = False) -> CfgNode:
    """The model's config (unfrozen). With `trained`, MODEL.WEIGHTS is the released checkpoint's URL; otherwise
    it is the config's own: the ImageNet backbone weights the model trains from (or none)."""
    cfg = load_project_config(get_config_file(name))
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(name)
    return cfg


def get(name: str, trained: bool = False, device: Optional[str] = None) -> nn.Module:
    """The model built from its config, with MODEL.WEIGHTS loaded (see `get_config`; downloaded once into the
    cache when it is a URL), in eval mode, on `device` (default: CUDA if available, else the CPU)."""
    cfg = get_config(name, trained)
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights = cfg.MODEL.WEIGHTS
    if weights and not is_url(weights) and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{name}: MODEL.WEIGHTS {weights!r} (the ImageNet weights its config trains from) is not a file here; "
            "get(name, trained=True) loads the released checkpoint, or convert the ImageNet weights "
            "(docs/MODEL_ZOO.md) and run from their folder"
        )
    model = build_model(cfg)
    if weights:
        SafeDetectionCheckpointer(model).load(weights)
    return model.eval()
