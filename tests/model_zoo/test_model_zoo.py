"""dinat_m2f.model_zoo: every config by name, the released checkpoints' URLs and metrics (against
tests/fixtures/model_zoo_reference.json), models built and loaded (from a local HTTP server), clear errors, and
the configs inside a non-editable install."""
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from dinat_m2f import model_zoo
from dinat_m2f.checkpoint.files import md5_prefix_in_name
from dinat_m2f.model_zoo import RELEASES, Release
from project_paths import CONFIGS, FIXTURES, REPO

REFERENCE = json.loads((FIXTURES / "model_zoo_reference.json").read_text())
SYNTHETIC = "synthetic/panoptic/dinat_mini"


def name_of(config_path: str) -> str:
    return config_path[len("configs/"):-len(".yaml")]


def test_every_config_of_the_repository_is_a_model():
    expected = sorted(p.relative_to(CONFIGS).with_suffix("").as_posix() for p in CONFIGS.rglob("*.yaml")
                      if not p.name.startswith("Base-"))
    assert model_zoo.list_models() == expected
    for name in ("coco/panoptic/dinat_l", "ade20k/semantic/swin_b_in21k", "cityscapes/instance/r50",
                 "synthetic/panoptic/dinat_mini", "coco/panoptic/nat_s", "ade20k/semantic/coatnet_0"):
        assert name in expected
    assert model_zoo.get_config_file("coco/panoptic/dinat_l") == str(CONFIGS / "coco/panoptic/dinat_l.yaml")


def test_releases_are_the_reference_ones():
    """URL, published metrics and md5 prefix of each of the 43 + 8 released checkpoints, and nothing else."""
    expected = {}
    for path, entry in REFERENCE["mask2former"].items():
        expected[name_of(path)] = (entry["released"]["url"], entry["released"]["metrics"])
        assert md5_prefix_in_name(entry["released"]["url"]) == entry["released"]["md5_prefix"]
    for path, entry in REFERENCE["dinat"].items():
        expected[name_of(path)] = (entry["url"], entry["metrics"])
    assert sorted(RELEASES) == sorted(expected)
    for name, (url, metrics) in expected.items():
        assert model_zoo.get_checkpoint_url(name) == url
        assert model_zoo.get_metrics(name) == {key: float(value) for key, value in metrics.items()}, name
        paper = RELEASES[name].paper
        assert all(metrics.get(key) != str(value) for key, value in paper.items()), name  # only where it differs
    assert "coco/semantic/dinat_l" not in RELEASES  # never released


def test_a_model_without_a_release_has_no_url():
    with pytest.raises(ValueError, match=r"coco/semantic/dinat_l has no released checkpoint.*train_net\.py"):
        model_zoo.get_checkpoint_url("coco/semantic/dinat_l")
    with pytest.raises(ValueError, match=r"released for this dataset and task: ade20k/panoptic/dinat_l, "
                                         r"ade20k/panoptic/r50, ade20k/panoptic/swin_l"):
        model_zoo.get_config("ade20k/panoptic/swin_t", trained=True)


def test_an_unknown_name_suggests_the_close_ones():
    with pytest.raises(ValueError, match=r"No model 'coco/panoptic/dinat-l'.*did you mean 'coco/panoptic/dinat_l'"):
        model_zoo.get_config_file("coco/panoptic/dinat-l")
    with pytest.raises(ValueError, match=r"No model 'configs/coco/panoptic/r50\.yaml'.*without '\.yaml'"):
        model_zoo.get("configs/coco/panoptic/r50.yaml")


def test_get_config_trained_or_not():
    assert model_zoo.get_config("coco/panoptic/r50").MODEL.WEIGHTS == (
        "detectron2://ImageNetPretrained/torchvision/R-50.pkl")
    trained = model_zoo.get_config("coco/panoptic/r50", trained=True)
    assert trained.MODEL.WEIGHTS == RELEASES["coco/panoptic/r50"].url
    assert trained.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 133


def test_get_without_the_imagenet_file_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"coco/panoptic/dinat_l: MODEL\.WEIGHTS 'dinat_large_in22k_11x11\.pkl'"
                                                r".*trained=True"):
        model_zoo.get("coco/panoptic/dinat_l")


def test_get_builds_loads_and_sets_eval_mode(tmp_path, file_server, monkeypatch):
    """get(trained=True) downloads the released file (here a model_final_<md5>.pkl of random weights served
    locally) once and loads it; without `trained` the synthetic config (no ImageNet weights) is random."""
    untrained = model_zoo.get(SYNTHETIC, device="cpu")
    assert not untrained.training and untrained.device == torch.device("cpu")

    cfg = model_zoo.get_config(SYNTHETIC)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(1)
    state = build_model(cfg).state_dict()
    data = pickle.dumps({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"})
    name = f"model_final_{hashlib.md5(data).hexdigest()[:6]}.pkl"
    (file_server.folder / name).write_bytes(data)
    monkeypatch.setitem(RELEASES, SYNTHETIC, Release(file_server.url(name), {"PQ": 1.0}))
    for _ in range(2):
        model = model_zoo.get(SYNTHETIC, trained=True, device="cpu")
        assert not model.training
        assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert file_server.requests == {f"/{name}": 1}


@pytest.mark.slow
def test_a_non_editable_install_ships_the_configs(tmp_path):
    """A wheel of the project installed into a folder: the zoo reads the configs inside the package."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("dinat_m2f", "configs"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source)],
                   check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("dinat_m2f-*.whl")
    target = tmp_path / "installed"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, cwd=tmp_path)
    shutil.rmtree(source)  # nothing may come from the sources

    script = (
        "import json, dinat_m2f\n"
        "from dinat_m2f import model_zoo\n"
        "cfg = model_zoo.get_config('coco/panoptic/r50', trained=True)\n"
        "print(json.dumps({'package': dinat_m2f.__file__, 'configs': str(model_zoo.configs_root()),\n"
        "                  'models': model_zoo.list_models(), 'weights': cfg.MODEL.WEIGHTS,\n"
        "                  'file': model_zoo.get_config_file('ade20k/semantic/swin_b_in21k')}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["package"] == str(target / "dinat_m2f" / "__init__.py")
    assert found["configs"] == str(target / "dinat_m2f" / "model_zoo" / "configs")
    assert found["models"] == model_zoo.list_models()
    assert found["weights"] == RELEASES["coco/panoptic/r50"].url
    assert os.path.isfile(found["file"]) and found["file"].startswith(str(target))


def test_the_model_zoo_page_lists_every_model_and_download():
    page = (REPO / "docs" / "MODEL_ZOO.md").read_text()
    rows = {line.split(" | ")[0][3:-1]: line for line in page.splitlines() if line.startswith("| `")}
    assert sorted(rows) == model_zoo.list_models()
    for name, row in rows.items():
        if name in RELEASES:
            assert f"[model]({RELEASES[name].url})" in row, name
        else:
            assert "no released checkpoint" in row, name
        assert f"](../configs/{name}.yaml)" in row, name
