from . import coatnet, swin  # noqa: F401  (register D2CoAtNet, D2SwinTransformer)
