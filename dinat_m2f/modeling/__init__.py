from .backbone.dinat import D2DiNAT, DiNAT
from .meta_arch.mask_former_head import MaskFormerHead
from .pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder
from .transformer_decoder.mask2former_transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = ["DiNAT", "D2DiNAT", "MaskFormerHead", "MSDeformAttnPixelDecoder", "MultiScaleMaskedTransformerDecoder"]
