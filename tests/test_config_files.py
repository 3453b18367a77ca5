"""Config files that are not configs: alias bombs, self-referencing aliases, _BASE_ cycles, files that are not
mappings or not regular files, URL bases. Each is refused before detectron2 merges anything, naming the file."""
import os

import pytest

from dinat_m2f.config import load_project_config
from dinat_m2f.config_files import MAX_EXPANDED_NODES
from memory_limit import address_space_budget
from project_paths import CONFIGS

BASE = CONFIGS / "synthetic" / "panoptic" / "dinat_mini.yaml"


def alias_bomb(levels: int) -> str:
    """9 ** levels values from a few hundred bytes of YAML."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    """39 MB of text at 7 levels took minutes of CPU in detectron2's merge; 9 levels would be 387 million values."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f'_BASE_: "{BASE}"\n' + alias_bomb(9))
    assert bomb.stat().st_size < 1000
    with address_space_budget(256 << 20), pytest.raises(ValueError) as error:
        load_project_config(str(bomb))
    message = str(error.value)
    assert f"Config file {bomb}: its YAML aliases expand to" in message
    assert f"over the limit of {MAX_EXPANDED_NODES}" in message


def test_a_bomb_in_a_base_file_names_that_file(tmp_path):
    bomb = tmp_path / "base_bomb.yaml"
    bomb.write_text(alias_bomb(7))
    config = tmp_path / "innocent.yaml"
    config.write_text(f'_BASE_: "{bomb.name}"\n')
    with pytest.raises(ValueError, match=f"Config file {bomb} \\(the _BASE_ of {config}\\): its YAML aliases"):
        load_project_config(str(config))


def test_an_alias_that_contains_itself_is_refused(tmp_path):
    config = tmp_path / "loop.yaml"
    config.write_text(f'_BASE_: "{BASE}"\nMODEL:\n  PIXEL_MEAN: &m [1, *m]\n')
    with pytest.raises(ValueError, match=f"Config file {config}: a YAML alias refers to a value that contains it"):
        load_project_config(str(config))


def test_a_base_cycle_names_the_chain(tmp_path):
    """It was a RecursionError."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text('_BASE_: "b.yaml"\n')
    b.write_text(f'_BASE_: ["{BASE}", "a.yaml"]\n')
    with pytest.raises(ValueError, match=f"Config file {a}: its _BASE_ files form a cycle: {a} -> {b} -> {a}"):
        load_project_config(str(a))

    own = tmp_path / "own.yaml"
    own.write_text('_BASE_: "./own.yaml"\n')
    with pytest.raises(ValueError, match="form a cycle"):
        load_project_config(str(own))


def test_a_base_shared_by_two_bases_is_not_a_cycle(tmp_path):
    for name in ("left", "right"):
        (tmp_path / f"{name}.yaml").write_text(f'_BASE_: "{BASE}"\nSOLVER:\n  MAX_ITER: {3 if name == "left" else 5}\n')
    config = tmp_path / "both.yaml"
    config.write_text('_BASE_: ["left.yaml", "right.yaml"]\n')
    assert load_project_config(str(config)).SOLVER.MAX_ITER == 5


@pytest.mark.parametrize("content, held", [
    ("- MODEL\n- SOLVER\n", "a list"),
    ("just text\n", "a str"),
    ("", r"nothing \(it is empty\)"),
    ("# only a comment\n", r"nothing \(it is empty\)"),
])  # fmt: skip
def test_a_config_that_is_not_a_mapping_is_named(tmp_path, content, held):
    config = tmp_path / "odd.yaml"
    config.write_text(content)
    with pytest.raises(ValueError, match=f"Config file {config} holds {held}, not a mapping of config keys"):
        load_project_config(str(config))


def test_a_fifo_or_folder_as_config_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=f"Config file {fifo} is a FIFO \\(named pipe\\), not a file"):
        load_project_config(str(fifo))
    with pytest.raises(ValueError, match=f"Config file {tmp_path} is a folder, not a file"):
        load_project_config(str(tmp_path))


def test_missing_and_url_bases_are_named_with_the_file_that_names_them(tmp_path):
    config = tmp_path / "child.yaml"
    config.write_text('_BASE_: "missing.yaml"\n')
    with pytest.raises(ValueError, match=f"Config file {tmp_path / 'missing.yaml'} \\(the _BASE_ of {config}\\) "
                                         "does not exist"):
        load_project_config(str(config))
    config.write_text('_BASE_: "http://127.0.0.1:9/../../base.yaml"\n')
    with pytest.raises(ValueError, match=f"Config file {config}: _BASE_ http://.* is a URL; configs are read from "
                                         "local files only"):
        load_project_config(str(config))
