"""tools/export_model.py: bad arguments are clear errors before anything is built (exporting itself is
tests/e2e/test_export.py)."""

import pytest
from project_paths import REPO as ROOT, import_script

CONFIG = str(ROOT / "configs" / "synthetic" / "panoptic" / "dinat_mini.yaml")


@pytest.fixture(scope="module")
def export_model():
    return import_script(ROOT / "tools" / "export_model.py", "export_model")


@pytest.mark.parametrize("arguments,message", [
    (["--format", "onnx", "--size", "64", "96", "--output", "model.pt2"], "a onnx file must end in .onnx"),
    (["--format", "onnx", "--size", "64", "96", "--output", "m.onnx", "--aoti"], "--aoti packages a pt2 export"),
    (["--format", "pt2", "--size", "64", "100", "--output", "m.pt2"], r"--size 64 100: .*SIZE_DIVISIBILITY = 32"),
    (["--format", "onnx", "--size", "0", "96", "--output", "m.onnx"], "--size 0 96: both sides must be positive"),
    (["--format", "onnx", "--size", "-64", "96", "--output", "m.onnx"], "--size -64 96: both sides must be positive"),
    (["--format", "onnx", "--size", "64", "1048576", "--output", "m.onnx"], "--size 64 1048576: sides over 8192"),
    (["--format", "onnx", "--size", "64", "96", "--output", "no/such/folder/m.onnx"],
     "--output no/such/folder/m.onnx: the folder no/such/folder does not exist"),
    (["--format", "onnx", "--size", "64", "96", "--output", str(ROOT / "tests")], f"--output {ROOT / 'tests'} is a folder"),
])
def test_bad_arguments_are_clear_errors(export_model, arguments, message):
    """Checked before the model is built (a missing output folder was found after 35 s of exporting)."""
    with pytest.raises(SystemExit, match=message):
        export_model.main(["--config-file", CONFIG, *arguments])


def test_every_bad_argument_is_named_at_once(export_model):
    with pytest.raises(SystemExit) as error:
        export_model.main(["--config-file", CONFIG, "--format", "onnx", "--size", "0", "96", "--aoti",
                           "--output", "missing/m.pt2"])
    assert str(error.value).splitlines() == [
        "--output missing/m.pt2: a onnx file must end in .onnx",
        "--output missing/m.pt2: the folder missing does not exist",
        "--aoti packages a pt2 export: use it with --format pt2",
        "--size 0 96: both sides must be positive",
    ]


def test_unknown_config_key_names_the_key(export_model):
    # The project's config loader's error (yacs raises an AssertionError for it).
    with pytest.raises((AssertionError, ValueError), match="MODEL.NO_SUCH_KEY"):
        export_model.main(["--config-file", CONFIG, "--format", "onnx", "--size", "64", "96", "--output", "m.onnx",
                           "MODEL.NO_SUCH_KEY", "1"])
