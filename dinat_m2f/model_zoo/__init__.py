"""The model zoo: every config of the repository by name, the released checkpoints' URLs and metrics, and built
models, as detectron2.model_zoo (docs/MODEL_ZOO.md)."""
from .model_zoo import (configs_root, get, get_checkpoint_url, get_config, get_config_file, get_metrics, get_release,
                        list_models)
from .releases import RELEASES, Release

__all__ = ["RELEASES", "Release", "configs_root", "get", "get_checkpoint_url", "get_config", "get_config_file",
           "get_metrics", "get_release", "list_models"]
