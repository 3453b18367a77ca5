from . import swin  # noqa: F401  (registers D2SwinTransformer)
