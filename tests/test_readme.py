"""Every Python block and shell command of README.md runs as written.

Each fenced ```python block runs as a script in a subprocess from an empty temporary folder. The ```bash blocks
run with bash (``set -e``) in one shared temporary folder, in the README's order (a block that uses a file an
earlier block wrote gets it: the earlier blocks run first). A block is skipped only when the README says so, in
an HTML comment on the line before its fence, which the reader of the README source sees:

    <!-- readme-test: skip REASON -->      never run here (network, minutes, runs forever), with the reason
    <!-- readme-test: needs MODULE -->     run when MODULE is importable, skipped otherwise

The calibkit and python commands are the ones of the running interpreter's environment."""

import dataclasses
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|needs)\s+(.+?)\s*-->")
TIMEOUT = 300


@dataclasses.dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None
    needs: str | None = None

    @property
    def id(self):
        return f"L{self.line}-{self.lang}"


def parse(text):
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        assert j < len(lines), f"README.md:{start + 1}: unclosed code fence"
        block = Block(start + 1, lang, "\n".join(lines[start + 1:j]) + "\n")
        marker = MARKER.search(lines[start - 1]) if start > 0 else None
        if marker:
            setattr(block, marker.group(1), marker.group(2))
        blocks.append(block)
        i = j + 1
    return blocks


BLOCKS = parse(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang == "python"]
SHELL = [b for b in BLOCKS if b.lang in ("bash", "sh", "shell", "console")]


def _env():
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "calibkit-numba"))
    env["MPLBACKEND"] = "Agg"  # no display here; the README's code does not choose a backend
    return env


def _check_runnable(block):
    if block.skip:
        pytest.skip(f"README.md:{block.line}: {block.skip}")
    if block.needs and importlib.util.find_spec(block.needs) is None:
        pytest.skip(f"README.md:{block.line}: needs {block.needs}, not installed")


def _run(args, cwd, what):
    r = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"{what} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block(block, tmp_path):
    _check_runnable(block)
    script = tmp_path / "readme_block.py"
    script.write_text(block.code, encoding="utf-8")
    _run([sys.executable, script.name], tmp_path, f"README.md:{block.line} (python)")


@pytest.fixture(scope="module")
def shell_dir(tmp_path_factory):
    return {"path": tmp_path_factory.mktemp("readme-shell"), "done": set()}


def _run_shell(block, shell_dir):
    _run(["bash", "-e", "-o", "pipefail", "-c", block.code], shell_dir["path"], f"README.md:{block.line} (bash)")
    shell_dir["done"].add(block.line)


@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_block(block, shell_dir):
    _check_runnable(block)
    for earlier in SHELL:
        if earlier.line >= block.line:
            break
        if earlier.line not in shell_dir["done"] and not earlier.skip and not (
                earlier.needs and importlib.util.find_spec(earlier.needs) is None):
            _run_shell(earlier, shell_dir)
    _run_shell(block, shell_dir)


def test_report_example_matches_readme(tmp_path):
    """The table the README shows for `calibkit report --example` is what the command prints."""
    install = next(b for b in SHELL if "calibkit report --example" in b.code)
    shown = next(b for b in BLOCKS if b.lang == "" and b.line > install.line)
    r = _run([sys.executable, "-m", "calibkit.cli", "report", "--example", "--quiet"], tmp_path, "report --example")
    assert r.stdout.rstrip().splitlines() == shown.code.rstrip().splitlines()


def test_readme_structure():
    text = README.read_text(encoding="utf-8")
    assert "../shared" not in text  # the examples use calibkit.datasets.load_example()
    assert len(PYTHON) >= 8 and len(SHELL) >= 5
    for i, line in enumerate(text.splitlines(), 1):  # a marker that is not right before a fence is a mistake
        if "readme-test:" in line:
            assert MARKER.search(line), f"README.md:{i}: malformed marker {line!r}"
    marked = {b.line - 1 for b in BLOCKS if b.skip or b.needs}
    n_markers = sum("readme-test:" in line for line in text.splitlines())
    assert len(marked) == n_markers, "a readme-test marker is not on the line right before a code fence"
    commands = " ".join(b.code for b in SHELL)
    assert 'pip install ".[test,peers]" && calibkit report --example' in commands  # the one-command main job
    assert "python -m pytest" in commands  # the test command, as .ci/run runs it
    assert "--index-url https://download.pytorch.org/whl/cpu" in commands
