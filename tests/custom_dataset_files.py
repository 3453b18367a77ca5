"""Small datasets in each format a description file names, written by the package's example writer and then
made awkward the way users' data is: a grayscale, an RGBA and a 16-bit image, a non-ASCII file name and one
with spaces (tests/data and tests/e2e use them)."""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

from dinat_m2f.data.datasets.example_dataset import write_example_dataset

# New name of the first training images, and how each is rewritten (the same pixels in another file format).
AWKWARD_IMAGES = [
    ("gray.jpg", "gray"),
    ("rgba.png", "rgba"),
    ("sixteen bit.png", "16-bit"),
    ("Straße_日本.jpg", "same"),
    ("a photo with spaces.jpg", "same"),
]


def write_awkward(pixels_rgb: np.ndarray, path: Path, kind: str) -> None:
    if kind == "gray":
        Image.fromarray(pixels_rgb).convert("L").save(path, quality=95)
    elif kind == "rgba":
        Image.fromarray(np.dstack([pixels_rgb, np.full(pixels_rgb.shape[:2], 200, np.uint8)]), "RGBA").save(path)
    elif kind == "16-bit":
        cv2.imwrite(str(path), pixels_rgb[:, :, ::-1].astype(np.uint16) * 257)
    else:
        Image.fromarray(pixels_rgb).save(path, quality=95)


def split_paths(description_file: Path, split: str = "train") -> dict:
    content = yaml.safe_load(Path(description_file).read_text(encoding="utf-8"))
    return {key: Path(description_file).parent / value for key, value in content["splits"][split].items()}


def make_awkward(description_file: Path) -> dict:
    """Rewrite the first training images as AWKWARD_IMAGES (renaming their label PNG too for semantic_masks);
    returns {new image path: original RGB pixels}."""
    files = split_paths(description_file)
    images = sorted(files["images"].iterdir())[: len(AWKWARD_IMAGES)]
    originals = {}
    renamed = {}
    for old, (new_name, kind) in zip(images, AWKWARD_IMAGES):
        pixels = np.asarray(Image.open(old).convert("RGB"))
        new = files["images"] / new_name
        write_awkward(pixels, new, kind)
        old.unlink()
        originals[new] = pixels
        renamed[old.name] = new_name
        if "annotations" not in files:
            (files["masks"] / f"{old.stem}.png").rename(files["masks"] / f"{new.stem}.png")
    if "annotations" in files:
        content = json.loads(files["annotations"].read_text())
        for image in content["images"]:
            image["file_name"] = renamed.get(image["file_name"], image["file_name"])
        files["annotations"].write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return originals


def make_dataset(directory: Path, format_name: str, name: str = "shapes", awkward: bool = True, **sizes) -> Path:
    """The example dataset of ``format_name`` in ``directory`` (6 training, 3 validation images of 48-80 px
    unless ``sizes`` say otherwise), with awkward images; returns the description file."""
    options = {"num_train": 6, "num_val": 3, "min_size": 48, "max_size": 80, **sizes}
    description = Path(write_example_dataset(str(directory), format_name, name, **options))
    if awkward:
        make_awkward(description)
    return description


def cache_folder(description_file: Path, split: str) -> Path:
    name = yaml.safe_load(Path(description_file).read_text(encoding="utf-8"))["name"]
    return Path(os.path.dirname(description_file)) / ".dinat_m2f" / name / split
