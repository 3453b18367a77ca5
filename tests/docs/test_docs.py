"""The documentation's links and commands point at things that exist.

Every relative link in README.md, docs/*.md and the other READMEs resolves to a file or folder of the
repository, and an #anchor to a heading of the linked page. In the fenced command blocks (```bash, ```sh,
```shell, and the `$ ` lines of ```console), every config (configs/...yaml) and script (train_net.py, demo/*.py,
tools/*.py|sh, datasets/*.py, scripts/*.sh) that a command names exists, every --flag given to a script is one its
argument parser knows (read from the script's own --help), and every config key given on the command line
(MODEL.WEIGHTS, SOLVER.MAX_ITER, ...) is a key of the project's config. Each test lists every problem it finds.
"""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
from dinat_m2f.config import get_project_cfg
from project_paths import REPO

PAGES = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "datasets" / "README.md",
     REPO / "tests" / "fixtures" / "README.md", REPO / "docker" / "local" / "README.md"]
)
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console"}
SCRIPT = re.compile(r"^(train_net\.py|demo/[\w.-]+\.py|tools/[\w.-]+\.(?:py|sh)|datasets/[\w.-]+\.py|scripts/[\w.-]+\.sh)$")
CONFIG = re.compile(r"^configs/[\w./-]+\.yaml$")
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(?:\.[A-Z][A-Z0-9_]*)+$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*```[^`]*$")  # a fence's info string has no backtick
HELP_DRIVER = """
import contextlib, io, json, runpy, sys
scripts, helps = sys.argv[1:], {}
for script in scripts:
    sys.argv, text = [script, "--help"], io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            runpy.run_path(script, run_name="__main__")
    except SystemExit:
        pass
    except Exception as error:
        text.write(f"FAILED: {type(error).__name__}: {error}")
    helps[script] = text.getvalue()
print(json.dumps(helps))
"""


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def prose_lines(page: Path) -> Iterator[Tuple[int, str]]:
    """The page's lines outside fenced blocks, with inline code removed, and their line numbers."""
    fenced = False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, re.sub(r"`[^`]*`", "", line)


def anchor_of(heading: str) -> str:
    """GitHub's anchor for a heading: links reduced to their text, lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> Set[str]:
    seen: Dict[str, int] = {}
    result = set()
    for _, line in prose_lines_with_code(page):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = anchor_of(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def prose_lines_with_code(page: Path) -> Iterator[Tuple[int, str]]:
    """Lines outside fenced blocks, inline code kept (headings keep the text of their code spans)."""
    fenced = False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield number, line


def test_every_relative_link_resolves():
    problems = []
    for page in PAGES:
        for number, line in prose_lines(page):
            for match in LINK.finditer(line):
                target = match.group(1) or match.group(2)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                path_part, _, anchor = target.partition("#")
                destination = (page.parent / path_part).resolve() if path_part else page
                where = f"{relative(page)}:{number}: {target}"
                if not destination.exists():
                    problems.append(f"{where}: no such file")
                elif REPO not in destination.parents and destination != REPO:
                    problems.append(f"{where}: points outside the repository")
                elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                    problems.append(f"{where}: no heading with anchor #{anchor} in {relative(destination)}")
    assert not problems, "broken links:\n" + "\n".join(problems)


def command_lines(page: Path) -> Iterator[Tuple[int, str]]:
    """The shell commands of the page's command blocks (continuation lines joined, comments dropped)."""
    language, pending, start = None, "", 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = FENCE.match(line) and re.match(r"^\s*```+\s*(\w*)", line)
        if fence:
            language = None if language is not None else fence.group(1).lower()
            continue
        if language not in COMMAND_LANGUAGES:
            continue
        if language == "console":
            if not line.startswith("$ ") and not pending:
                continue
            line = line[2:] if line.startswith("$ ") else line
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command, pending = (pending + line).strip(), ""
        if command and not command.startswith("#"):
            yield start, command


def words(command: str) -> List[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:
        return command.split()


def named_commands() -> List[Tuple[str, List[str]]]:
    """(page:line, words) of every command line in the documentation."""
    return [(f"{relative(page)}:{number}", words(command)) for page in PAGES for number, command in command_lines(page)]


def test_every_config_and_script_in_a_command_exists():
    problems = []
    for where, tokens in named_commands():
        for token in tokens:
            token = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
            if (SCRIPT.match(token) or CONFIG.match(token)) and not (REPO / token).is_file():
                problems.append(f"{where}: {token} does not exist")
    assert not problems, "missing files in command blocks:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def script_options() -> Dict[str, Set[str]]:
    """Each script named in a command block -> the options its --help lists (one Python process runs them all)."""
    scripts = sorted({t for _, tokens in named_commands() for t in tokens if SCRIPT.match(t) and t.endswith(".py")
                      and (REPO / t).is_file()})
    result = subprocess.run([sys.executable, "-c", HELP_DRIVER, *scripts], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    helps = json.loads(result.stdout.strip().splitlines()[-1])
    failed = {s: h for s, h in helps.items() if "FAILED:" in h or "usage:" not in h}
    assert not failed, f"--help did not print a usage: {failed}"
    return {script: set(re.findall(r"(?<![\w-])(--[a-zA-Z][\w-]*)", text)) for script, text in helps.items()}


def test_every_flag_of_a_script_command_is_in_its_argument_parser(script_options):
    problems = []
    for where, tokens in named_commands():
        script = next((t for t in tokens if SCRIPT.match(t) and t.endswith(".py")), None)
        if script is None or script not in script_options:
            continue
        for token in tokens[tokens.index(script) + 1:]:
            flag = token.split("=", 1)[0]
            if flag.startswith("--") and flag not in script_options[script]:
                problems.append(f"{where}: {script} has no option {flag}")
    assert not problems, "unknown options in command blocks:\n" + "\n".join(problems)


def test_every_config_key_on_a_command_line_exists():
    cfg = get_project_cfg()
    problems = []
    for where, tokens in named_commands():
        for token in tokens:
            if not CONFIG_KEY.match(token):
                continue
            node = cfg
            for part in token.split("."):
                if not hasattr(node, "keys") or part not in node:
                    problems.append(f"{where}: {token} is not a config key")
                    break
                node = node[part]
    assert not problems, "unknown config keys in command blocks:\n" + "\n".join(problems)


def test_the_checks_see_the_pages_and_their_commands():
    """Guards the parsing itself: the README is read, it has command blocks, and a broken link would be seen."""
    assert REPO / "README.md" in PAGES and all(page.is_file() for page in PAGES)
    commands = [" ".join(tokens) for where, tokens in named_commands() if where.startswith("README.md:")]
    assert "bash scripts/setup.sh" in commands
    assert "python -m pytest -q -n 2 --dist loadfile tests" in commands
    assert any(c.startswith("python train_net.py --config-file configs/synthetic/panoptic/dinat_mini.yaml")
               for c in commands)
    assert anchor_of("Supported torch versions") == "supported-torch-versions"
    assert anchor_of("`MODEL.COATNET.ATTN_WINDOW`") == "modelcoatnetattn_window"
    assert anchor_of("LaViT (this project's design)") == "lavit-this-projects-design"
