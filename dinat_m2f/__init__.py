"""DiNAT + Mask2Former for detectron2. Importing this package registers the backbone, heads,
meta-architecture, datasets and dataset mappers with detectron2's registries. `Predictor` runs a model on images;
`dinat_m2f.model_zoo` gives the models by name."""
from . import startup  # noqa: F401  (first: fvcore and detectron2 imported without torch's jit notice)
from .config import (add_coatnet_config, add_dinat_config, add_hrvit_config, add_lavit_config, add_maskformer2_config,
                     add_shiftvit_config, add_timm_config, get_project_cfg)
from . import layers, modeling  # noqa: F401  (registers D2DiNAT, the head and both decoders)
from . import data  # noqa: F401  (registers the datasets and mappers)
from .maskformer_model import MaskFormer  # noqa: F401  (registers the meta-architecture)
from .predictor import Predictor

__all__ = ["add_coatnet_config", "add_dinat_config", "add_hrvit_config", "add_lavit_config", "add_maskformer2_config",
           "add_shiftvit_config", "add_timm_config", "get_project_cfg", "MaskFormer", "Predictor"]
