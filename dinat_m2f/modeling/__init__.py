from .backbone.dinat import D2DiNAT, DiNAT

__all__ = ["DiNAT", "D2DiNAT"]
