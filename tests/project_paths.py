"""Where the tests find the project and the reference fixtures (tests/fixtures, described in its README)."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FIXTURES = REPO / "tests" / "fixtures"


def import_script(path: Path, name: str) -> ModuleType:
    """A script of the project (tools/, train_net.py, datasets/; some file names have dashes) as a module named
    `name`, registered in sys.modules (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
