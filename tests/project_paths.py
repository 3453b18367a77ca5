"""Where the tests find the project and the reference fixtures (../shared/fixtures beside the project root)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FIXTURES = REPO.parent / "shared" / "fixtures"
