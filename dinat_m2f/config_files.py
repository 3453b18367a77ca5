"""Config files are checked before detectron2 merges them, each error naming the file:

- it exists and is a regular file (a FIFO would block the reader);
- it is a YAML mapping (an empty file or a list is not a config);
- its aliases do not expand beyond MAX_EXPANDED_NODES values, and none refers to itself: a "billion laughs"
  file of a few hundred bytes expands to gigabytes when merged, after minutes of CPU;
- its ``_BASE_`` files (a path or a list of paths, relative to the file) are local files, with no cycle.

YAML errors (python tags among them) propagate as yaml.YAMLError for the caller to word.
"""
import os
from typing import Any, Dict, List

import yaml

from .special_files import special_file_kind

__all__ = ["ConfigFileError", "MAX_EXPANDED_NODES", "check_config_files"]

BASE_KEY = "_BASE_"
# The project's largest config has about 400 values with its bases; aliases may repeat parts of a file.
MAX_EXPANDED_NODES = 100_000


class ConfigFileError(ValueError):
    """A config file (or one of its _BASE_ files) cannot be a config; the message names it."""


class _SelfReference(Exception):
    pass


def _expanded_size(node: Any, sizes: Dict[int, int], path: set) -> int:
    """Values in ``node`` once every alias is copied out (shared nodes counted once per use, each measured once)."""
    if not isinstance(node, (dict, list)):
        return 1
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in path:
        raise _SelfReference()
    path.add(key)
    children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
    sizes[key] = 1 + sum(_expanded_size(child, sizes, path) for child in children)
    path.discard(key)
    return sizes[key]


def _read(config_file: str, named_by: str) -> Dict[str, Any]:
    where = f" (the _BASE_ of {named_by})" if named_by else ""
    kind = special_file_kind(config_file)
    if kind:
        raise ConfigFileError(f"Config file {config_file}{where} is {kind}, not a file")
    if not os.path.exists(config_file):
        raise ConfigFileError(f"Config file {config_file}{where} does not exist")
    try:
        with open(config_file, "rb") as f:  # YAML detects the encoding; undecodable bytes are a YAMLError
            data = yaml.safe_load(f)
    except OSError as error:
        raise ConfigFileError(f"Config file {config_file}{where}: {error.strerror}") from error
    except RecursionError as error:
        raise ConfigFileError(f"Config file {config_file}{where} is nested too deeply to be a config") from error
    if not isinstance(data, dict):
        held = "nothing (it is empty)" if data is None else f"a {type(data).__name__}"
        raise ConfigFileError(f"Config file {config_file}{where} holds {held}, not a mapping of config keys")
    try:
        size = _expanded_size(data, {}, set())
    except _SelfReference:
        raise ConfigFileError(
            f"Config file {config_file}{where}: a YAML alias refers to a value that contains it"
        ) from None
    if size > MAX_EXPANDED_NODES:
        raise ConfigFileError(
            f"Config file {config_file}{where}: its YAML aliases expand to {size} values, over the limit of "
            f"{MAX_EXPANDED_NODES} (a config is a few hundred; this looks like an alias bomb)"
        )
    return data


def _bases(config_file: str, data: Dict[str, Any]) -> List[str]:
    """The _BASE_ files ``data`` names, resolved as detectron2 resolves them."""
    named = data.get(BASE_KEY)
    if named is None:
        return []
    names = named if isinstance(named, list) else [named]
    if not all(isinstance(name, str) and name for name in names):
        raise ConfigFileError(f"Config file {config_file}: _BASE_ {named!r} is not a file path or a list of them")
    bases = []
    for name in names:
        if name.startswith(("http://", "https://")):
            raise ConfigFileError(
                f"Config file {config_file}: _BASE_ {name} is a URL; configs are read from local files only "
                "(download it and name the file)"
            )
        name = os.path.expanduser(name)
        bases.append(name if os.path.isabs(name) else os.path.join(os.path.dirname(config_file), name))
    return bases


def check_config_files(config_file: str) -> None:
    """Check ``config_file`` and every _BASE_ file it leads to (see the module docstring). Raises ConfigFileError
    naming the file (and, for a cycle, the chain of files)."""
    pending = [(config_file, [])]  # (file, the chain of files that led to it)
    while pending:
        path, chain = pending.pop()
        real = os.path.realpath(path)
        if real in (os.path.realpath(p) for p in chain):
            cycle = " -> ".join([*chain[[os.path.realpath(p) for p in chain].index(real):], path])
            raise ConfigFileError(f"Config file {chain[0]}: its _BASE_ files form a cycle: {cycle}")
        data = _read(path, chain[-1] if chain else "")
        pending += [(base, [*chain, path]) for base in _bases(path, data)]
