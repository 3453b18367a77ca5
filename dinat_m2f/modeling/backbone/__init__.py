from . import coatnet  # noqa: F401  (registers D2CoAtNet)
from . import hrvit  # noqa: F401  (registers D2HRViT)
from . import lavit  # noqa: F401  (registers D2LaViT)
from . import swin  # noqa: F401  (registers D2SwinTransformer)
