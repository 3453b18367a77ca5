#!/usr/bin/env python
"""Kept for existing commands: the same as `tools/convert-pretrained-model-to-d2.py --arch dinat ...`.

    python tools/convert-pretrained-dinat-model-to-d2.py dinat_large_in22k_224.pth \
        dinat_large_in22k_11x11.pkl --kernel-size 11
"""
import importlib.util
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

_spec = importlib.util.spec_from_file_location("convert_pretrained_model_to_d2",
                                               Path(__file__).with_name("convert-pretrained-model-to-d2.py"))
_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tool)
logger = _tool.logger


def convert(state_dict: Dict[str, torch.Tensor], kernel_size: Optional[int] = None
            ) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    return _tool.convert(state_dict, "dinat", kernel_size=kernel_size)


def main(argv: Optional[List[str]] = None) -> None:
    _tool.main(["--arch", "dinat", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
