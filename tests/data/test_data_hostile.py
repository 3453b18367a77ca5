"""A dataset JSON naming files outside the dataset (`file_name` with '..' or an absolute path) only ever has
images read from there: a file that is not an image is named in the error, and nothing is written anywhere."""
import json

import pytest

from dinat_m2f.config import get_project_cfg
from dinat_m2f.data import ImageFileError, build_mapper
from dinat_m2f.data.datasets.panoptic_json import load_panoptic_json
from dinat_m2f.data.datasets.synthetic import SyntheticSpec, generate_synthetic_dataset, split_paths


@pytest.mark.parametrize("traversal", ["relative", "absolute"])
def test_file_names_that_leave_the_dataset_are_read_as_images_only(tmp_path, traversal):
    generate_synthetic_dataset(str(tmp_path / "synthetic"), SyntheticSpec(num_train=2, num_val=1, seed=3))
    paths = split_paths(str(tmp_path / "synthetic"), "train")
    secret = tmp_path / "home" / "notes.txt"
    secret.parent.mkdir()
    secret.write_text("the user's notes")
    content = json.loads(open(paths["panoptic_json"]).read())
    content["images"][0]["file_name"] = "../../home/notes.txt" if traversal == "relative" else str(secret)
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(content))
    meta = {"thing_dataset_id_to_contiguous_id": {}, "stuff_dataset_id_to_contiguous_id": {}}
    for category in content["categories"]:
        key = "thing_dataset_id_to_contiguous_id" if category["isthing"] else "stuff_dataset_id_to_contiguous_id"
        meta[key][category["id"]] = len(meta[key])
    records = load_panoptic_json(str(hostile), paths["image_root"], paths["panoptic_root"], None, meta)
    before = sorted(p for p in tmp_path.rglob("*"))

    cfg = get_project_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_panoptic"
    cfg.INPUT.CROP.ENABLED = False
    with pytest.raises(ImageFileError, match=r"Cannot read image file .*home/notes\.txt"):
        build_mapper(cfg, is_train=True)(records[0])
    assert secret.read_text() == "the user's notes"
    assert sorted(p for p in tmp_path.rglob("*")) == before
