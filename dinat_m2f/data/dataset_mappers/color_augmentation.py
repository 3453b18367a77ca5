"""SSD-style photometric distortion (random brightness, contrast, saturation and hue)."""
import cv2
import numpy as np
from fvcore.transforms.transform import Transform


class ColorAugSSDTransform(Transform):
    """Photometric distortion of the SSD paper, applied in random order as SSD does: brightness, then
    contrast either before or after saturation and hue. Each step happens with probability 1/2.
    Geometry and labels are unchanged. Works on uint8 images in ``img_format`` ("RGB" or "BGR")."""

    def __init__(
        self,
        img_format: str,
        brightness_delta: int = 32,
        contrast_low: float = 0.5,
        contrast_high: float = 1.5,
        saturation_low: float = 0.5,
        saturation_high: float = 1.5,
        hue_delta: int = 18,
    ):
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"ColorAugSSDTransform needs an RGB or BGR image, got INPUT.FORMAT={img_format}")
        self._set_attributes(locals())

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        bgr = img[:, :, ::-1] if self.img_format == "RGB" else img
        bgr = self._brightness(bgr)
        if np.random.randint(2):
            bgr = self._saturation_and_hue(self._contrast(bgr))
        else:
            bgr = self._contrast(self._saturation_and_hue(bgr))
        return np.ascontiguousarray(bgr[:, :, ::-1] if self.img_format == "RGB" else bgr)

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _brightness(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            return self._convert(img, beta=np.random.uniform(-self.brightness_delta, self.brightness_delta))
        return img

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            return self._convert(img, alpha=np.random.uniform(self.contrast_low, self.contrast_high))
        return img

    def _saturation_and_hue(self, img: np.ndarray) -> np.ndarray:
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV)
        if np.random.randint(2):
            hsv[:, :, 1] = self._convert(
                hsv[:, :, 1], alpha=np.random.uniform(self.saturation_low, self.saturation_high)
            )
        if np.random.randint(2):
            # OpenCV's 8-bit hue runs over 0..179
            shift = np.random.randint(-self.hue_delta, self.hue_delta)
            hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
