"""Downloaded files whose name carries an md5 prefix (model_final_<6 hex>.pkl, the convention of detectron2's and
Mask2Former's releases) are checked against their bytes before they enter the cache, served by a local HTTP
server."""
import hashlib
import pickle

import pytest
import torch
from torch import nn

from dinat_m2f.checkpoint import SafeDetectionCheckpointer
from dinat_m2f.checkpoint.files import ChecksumError, md5_prefix_in_name


def released_pkl(model: nn.Module) -> bytes:
    return pickle.dumps({"model": {k: v.numpy() for k, v in model.state_dict().items()}, "__author__": "Mask2Former"})


def cache_contents(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_a_file_whose_bytes_match_its_name_is_cached_and_loaded(tmp_path, file_server):
    model = nn.Linear(4, 3)
    data = released_pkl(model)
    name = f"model_final_{hashlib.md5(data).hexdigest()[:6]}.pkl"
    (file_server.folder / name).write_bytes(data)
    loaded = nn.Linear(4, 3)
    SafeDetectionCheckpointer(loaded).load(file_server.url(name))
    assert torch.equal(loaded.weight, model.weight)
    assert cache_contents(tmp_path) == [name]


def test_a_file_whose_bytes_disagree_with_its_name_is_an_md5_error_and_not_cached(tmp_path, file_server):
    data = released_pkl(nn.Linear(4, 3))
    actual = hashlib.md5(data).hexdigest()[:6]
    expected = "000000" if actual != "000000" else "ffffff"
    name = f"model_final_{expected}.pkl"
    (file_server.folder / name).write_bytes(data)
    url = file_server.url(name)
    for _ in range(2):  # nothing was cached: the second try downloads (and refuses) again
        with pytest.raises(ChecksumError) as error:
            SafeDetectionCheckpointer(nn.Linear(4, 3)).load(url)
        message = str(error.value)
        assert "md5" in message and url in message and expected in message and actual in message, message
        assert cache_contents(tmp_path) == []
    assert file_server.requests == {f"/{name}": 2}


@pytest.mark.parametrize("url, prefix", [
    ("https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_R50_bs16_50ep/"
     "model_final_94dc52.pkl", "94dc52"),
    ("http://127.0.0.1:8000/model_final_94dc52.pkl?matching_heuristics=True", "94dc52"),
    ("https://shi-labs.com/projects/dinat/checkpoints/m2f/mask2former_dinat_large_coco_panoptic.pth", None),
    ("https://example.com/model_final.pth", None),
    ("https://example.com/model_final_94dc52.pkl.part", None),
    ("https://example.com/model_final_94DC5Z.pkl", None),
])  # fmt: skip
def test_md5_prefix_in_name(url, prefix):
    assert md5_prefix_in_name(url) == prefix
