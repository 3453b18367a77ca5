"""detectron2's ``default_setup`` for train_net.py, with a log that reads the same in a terminal, a pipe and
log.txt."""
from detectron2.config import CfgNode
from detectron2.engine import defaults

from ..startup import hide_no_cuda_runtime_notice


def plain_text(code: str, filename: str) -> str:
    """What detectron2's config highlighting returns without pygments: the text as it is."""
    return code


def default_setup(cfg: CfgNode, args) -> None:
    """detectron2's :func:`~detectron2.engine.defaults.default_setup` (loggers, environment report, command line,
    config dump, ``config.yaml``, seeds) with the config logged as plain text: detectron2 colours it with terminal
    escape codes, which the same record also writes into log.txt and into a piped or redirected log. torch's "No
    CUDA runtime is found" notice, which the environment report triggers, is dropped (:mod:`dinat_m2f.startup`)."""
    hide_no_cuda_runtime_notice()
    highlight = getattr(defaults, "_highlight", None)
    defaults._highlight = plain_text
    try:
        defaults.default_setup(cfg, args)
    finally:
        if highlight is None:
            del defaults._highlight
        else:
            defaults._highlight = highlight
