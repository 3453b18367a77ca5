"""Meta-architecture pieces; importing this package registers MaskFormerHead."""
from .mask_former_head import MaskFormerHead

__all__ = ["MaskFormerHead"]
