"""Pixel decoders; importing this package registers them."""
from .build import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from .msdeformattn import MSDeformAttnPixelDecoder

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder", "MSDeformAttnPixelDecoder"]
