"""Reading image and label files: the one reader of training, evaluation, dataset checks and the demo.

Images come back as 8-bit arrays whatever the file stores: 16-bit files (PNG, TIFF; grayscale or colour) are
scaled to 8 bits (value / 257), float files with values in [0, 1] are scaled by 255 and other float files are
refused; a file Pillow calls a decompression bomb is refused. Label maps come back with their stored values
(8 or 16 bits; palette files as their indices). Panoptic PNGs must be 8-bit RGB. Every error names the file.
"""
import logging
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import log_first_n
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFileError",
    "ImageHeader",
    "check_label_values",
    "check_same_size",
    "panoptic_png_problem",
    "read_image_file",
    "read_image_header",
    "read_label_map",
    "read_panoptic_png",
]

class ImageFileError(OSError):
    """An image or label file could not be read or decoded, or holds pixels this project cannot use."""


EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 (or absent) is the stored layout, 2-8 flip and/or rotate it

# File extensions of images in dataset folders (lower case).
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Pillow modes of one 16-bit channel (a 16-bit colour file opens as 8-bit "RGB", keeping the high bytes).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# What Pillow raises for missing, truncated, undecodable or oversized files.
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageHeader(NamedTuple):
    """What a file's header says: size, Pillow mode and bits per channel as stored."""

    height: int
    width: int
    mode: str
    bits: int


def _stored_bits(image: Image.Image) -> int:
    """Bits per channel of the file behind a not yet loaded ``image``: 16 for 16-bit files, also those Pillow
    opens as 8-bit (it keeps the high bytes of 16-bit colour)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return 16
    for tile in image.tile:
        rawmode = tile.args if isinstance(tile.args, str) else (tile.args or ("",))[0]
        if isinstance(rawmode, str) and ";16" in rawmode:
            return 16
    return 8


def _open(file_name: str, decode: bool = True) -> Tuple[Image.Image, ImageHeader]:
    """The file opened by Pillow (decoded unless ``decode`` is False) and its header, errors naming the file."""
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            header = ImageHeader(image.height, image.width, image.mode, _stored_bits(image))
            if decode:
                image.load()
            return image, header
    except _READ_ERRORS as e:
        raise ImageFileError(f"Cannot read image file {file_name}: {e}") from e


def read_image_header(file_name: str) -> ImageHeader:
    """Size, mode and bits of an image file from its header only (nothing decoded), errors naming the file."""
    return _open(file_name, decode=False)[1]


def _eight_bit(image: Image.Image, file_name: str) -> Image.Image:
    """``image`` with 8-bit channels: 16-bit and integer values scaled from 0..65535, floats from [0, 1]."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageFileError(
                f"{file_name}: 32-bit integer pixels ({values.min()}..{values.max()}) are not an image this "
                "project reads; save it with 8 or 16 bits per channel"
            )
        log_first_n(logging.INFO, f"{file_name} has 16-bit pixels: scaled to 8 bits (value / 257)", n=1,
                    name=__name__, key="caller")  # fmt: skip
        return Image.fromarray(((values.astype(np.uint32) + 128) // 257).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ImageFileError(
                f"{file_name}: float pixels with values in [{np.nanmin(values)}, {np.nanmax(values)}]; float images "
                "are read only with values in [0, 1] (scaled to 0..255): save it with 8 or 16 bits per channel"
            )
        return Image.fromarray(np.round(values * 255).astype(np.uint8), "L")
    return image


def _warn_orientation(image: Image.Image, file_name: str) -> None:
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in (1, 0):
        log_first_n(
            logging.WARNING,
            f"{file_name} has EXIF orientation {orientation} (shown rotated or flipped by viewers): it is used as "
            "stored, the layout its labels and the dataset's width/height refer to",
            n=1,
            name=__name__,
            key="message",
        )


def read_image_file(file_name: str, image_format: Optional[str] = None, *, apply_exif: bool = False) -> np.ndarray:
    """The pixels of an image file in ``image_format`` ("RGB", "BGR", "L", ... as detectron2's read_image),
    8 bits per channel (see the module docstring); with ``image_format`` None, the stored values of a label
    file (see :func:`read_label_map`).

    An EXIF orientation tag is applied only with ``apply_exif`` (photos shown to a user, as the demo does).
    Datasets read the stored layout: their labels (PNGs, polygons, RLE), width/height and the evaluators'
    ground truth refer to it, and a rotated image would no longer line up with them; such a file gets a
    warning naming it, once per process.
    """
    image, _ = _open(file_name)
    if apply_exif:
        image = ImageOps.exif_transpose(image)
    else:
        _warn_orientation(image, file_name)
    if image_format is None:
        if image.mode == "F":
            raise ImageFileError(f"Label file {file_name} has float pixels; label maps hold integer values")
        return np.asarray(image.convert("L") if image.mode == "1" else image)
    return utils.convert_PIL_to_numpy(_eight_bit(image, file_name), image_format)


def check_label_values(labels: np.ndarray, num_classes: int, ignore_label: int, file_name: str) -> None:
    """Every value of a semantic label map is a class (0..num_classes-1) or ``ignore_label``; else an
    error naming the file and the values."""
    if labels.size == 0 or labels.max() < num_classes:
        return
    outside = (labels >= num_classes) & (labels != ignore_label)
    if outside.any():
        raise ImageFileError(
            f"Label file {file_name} has values {np.unique(labels[outside]).tolist()[:10]}, which are neither a "
            f"class (0..{num_classes - 1}) nor the ignore label {ignore_label}"
        )


def check_same_size(what: str, shape: Sequence[int], image_file: str, image_shape: Sequence[int]) -> None:
    """An error naming ``what`` (e.g. "Label file x.png") and its image when their heights/widths differ."""
    if tuple(shape[:2]) != tuple(image_shape[:2]):
        raise ImageFileError(
            f"{what} is {shape[1]}x{shape[0]} (width x height) but its image {image_file} is "
            f"{image_shape[1]}x{image_shape[0]}"
        )


def read_label_map(file_name: str, num_classes: Optional[int] = None, ignore_label: Optional[int] = None) -> np.ndarray:
    """A single-channel label file (e.g. semantic ids; 8 or 16 bits, palette files as their indices) as an
    (H, W) integer array; with ``num_classes``, checked by :func:`check_label_values`."""
    labels = read_image_file(file_name)
    if labels.ndim != 2:
        raise ImageFileError(f"Label file {file_name} has {labels.shape[2]} channels; expected one")
    if num_classes is not None:
        check_label_values(labels, num_classes, ignore_label, file_name)
    return labels


def panoptic_png_problem(file_name: str, header: ImageHeader) -> Optional[str]:
    """Why a file with this header cannot be a COCO panoptic PNG (8-bit RGB or RGBA), or None: a 16-bit or
    single-channel file decodes to ids no segment has."""
    if header.mode in ("RGB", "RGBA") and header.bits == 8:
        return None
    return (
        f"Panoptic PNG {file_name} is {header.bits}-bit {header.mode}: COCO panoptic PNGs are 8-bit RGB "
        "(segment id = R + 256 G + 256^2 B)"
    )


def read_panoptic_png(file_name: str) -> np.ndarray:
    """A COCO panoptic PNG as (H, W, 3) uint8 (segment id = R + 256 G + 256^2 B); anything but an 8-bit
    RGB(A) file is refused (:func:`panoptic_png_problem`)."""
    image, header = _open(file_name)
    problem = panoptic_png_problem(file_name, header)
    if problem:
        raise ImageFileError(problem)
    return np.asarray(image.convert("RGB"))
