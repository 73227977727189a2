"""Every code block of the README runs as written, against a real `varstore serve`.

Python blocks run as scripts, with ``$VARSTORE_ADDRESS`` naming a fresh server (and
``localhost:7011`` in the text replaced by its address); where a ``print(...)`` line ends in a
comment, that comment is the line it prints. A block whose first line is ``# NAME.py: ...`` is
the file NAME.py that the bash blocks after it run. Bash blocks run line by line; the commands
a test cannot run as they are (installs, the suite itself, a server on the fixed port 7011) are
checked for what they promise instead. A block fenced as ```` ```python fragment ```` or
```` ```bash fragment ```` is an excerpt that needs a context of its own (a model, other
hosts, minutes of training); it is only checked to parse.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess
from tests.extras import missing_hint

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)( fragment)?\n(.*?)^```$", re.DOTALL | re.MULTILINE)
FILE_BLOCK = re.compile(r"^# (\w+\.py): ")
PRINT_COMMENT = re.compile(r"^\s*print\(.*\)\s+# (.*)$")
DEFAULT_ADDRESS = "localhost:7011"


@dataclass
class Block:
    """A fenced code block of the README."""

    language: str
    fragment: bool
    code: str
    line: int

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.language}{'-fragment' if self.fragment else ''}"


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [Block(m[1], bool(m[2]), m[3], text.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(text)]


BLOCKS = readme_blocks()
RUNNABLE = [b for b in BLOCKS if not b.fragment and b.language in ("python", "bash")]


def test_the_readme_has_the_blocks_a_newcomer_needs() -> None:
    languages = {b.language for b in BLOCKS}
    assert languages <= {"python", "bash"}, languages
    assert len(RUNNABLE) >= 6
    fragments = [b for b in BLOCKS if b.fragment]
    assert len(fragments) <= len(BLOCKS) // 2


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.fragment], ids=lambda b: b.id)
def test_fragments_parse(block: Block) -> None:
    if block.language == "python":
        ast.parse(block.code)
    else:
        subprocess.run(["bash", "-n"], input=block.code, text=True, check=True)


@pytest.fixture
def folder(tmp_path: Path, server_process: ServerProcess) -> Path:
    """A working folder whose processes talk to ``server_process`` by default, holding the
    files the README's ``# NAME.py`` blocks define."""
    for block in BLOCKS:
        named = FILE_BLOCK.match(block.code)
        if named:
            (tmp_path / named[1]).write_text(block.code)
    return tmp_path


def _env(server: ServerProcess) -> dict[str, str]:
    return {**os.environ, "VARSTORE_ADDRESS": server.address}


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.language == "python"
                                   and not FILE_BLOCK.match(b.code)], ids=lambda b: b.id)
def test_python_block_runs_and_prints_what_it_says(block: Block, folder: Path,
                                                  server_process: ServerProcess) -> None:
    code = block.code.replace(DEFAULT_ADDRESS, server_process.address)
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, env=_env(server_process),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, missing_hint(result.stderr) + result.stderr
    promised = [m[1] for m in map(PRINT_COMMENT.match, block.code.splitlines()) if m]
    assert result.stdout.splitlines() == promised


def _commands(block: Block) -> list[str]:
    """The block's commands: its lines without comments, split at ``&&``."""
    commands = []
    for line in block.code.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands += [c.strip() for c in line.split("&&")]
    return commands


def _check_install(command: str) -> None:
    """``pip install -e ".[EXTRAS]"``: each extra is one that pyproject.toml defines."""
    (target,) = shlex.split(command)[3:]
    assert target.startswith("."), command
    extras = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
    assert extras, command
    defined = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra in filter(None, (extras[1] or "").split(",")):
        assert extra in defined, f"{command}: pyproject.toml has no extra {extra!r}"


def _check_suite(block: Block) -> None:
    """The README's test command is the one .ci/run runs, word for word."""
    (line,) = [ln for ln in block.code.splitlines() if "pytest" in ln]
    assert line.strip() in (ROOT / ".ci" / "run").read_text().splitlines()


def _check_serve(command: str, folder: Path) -> None:
    """``varstore serve`` as written, on a free port instead of 7011: it serves, keeps its
    checkpoints in ./checkpoints, and Ctrl-C stops it."""
    args = shlex.split(command)[2:]
    proc = subprocess.Popen([sys.executable, "-m", "varstore.cli", "serve", *args,
                             "--port", "0"], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        serving = re.compile(r"varstore serving on \S+:\d+ \(checkpoints in checkpoints\)")
        lines: list[str] = []
        while not (lines and serving.match(lines[-1])):
            lines.append(proc.stdout.readline())
            assert lines[-1], f"the server stopped: {lines}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.language == "bash"],
                         ids=lambda b: b.id)
def test_bash_block_runs_as_written(block: Block, folder: Path,
                                    server_process: ServerProcess) -> None:
    for command in _commands(block):
        if command.startswith("pip install -e"):
            _check_install(command)
        elif command == "python -m pytest -q":
            _check_suite(block)
        elif command.startswith("varstore serve"):
            _check_serve(command, folder)
        else:
            result = subprocess.run(["bash", "-c", command], cwd=folder,
                                    env=_env(server_process), capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 0, missing_hint(result.stderr) + result.stderr
            promised = re.search(r"prints (.*)$", block.code)
            if promised:
                assert promised[1] in result.stdout.splitlines()[-1], result.stdout



def test_a_block_whose_extra_is_missing_fails_saying_what_to_install() -> None:
    # Without TensorFlow the README's TensorFlow block failed with a bare traceback. (A folder
    # of its own, not tmp_path: the inner pytest's clean-up of old tmp_paths may remove ours.)
    block = next(b for b in RUNNABLE if b.language == "python" and not FILE_BLOCK.match(b.code)
                 and re.search(r"^import tensorflow", b.code, re.MULTILINE))
    with tempfile.TemporaryDirectory() as hiding:
        (Path(hiding) / "tensorflow").mkdir()
        (Path(hiding) / "tensorflow" / "__init__.py").write_text(
            "raise ModuleNotFoundError(\"No module named 'tensorflow'\", name='tensorflow')\n")
        paths = [hiding, *filter(None, [os.environ.get("PYTHONPATH")])]
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{Path(__file__).relative_to(ROOT)}::test_python_block_runs_and_prints_what_it_"
             f"says[{block.id}]"], cwd=ROOT, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    assert done.returncode == 1, done.stdout[-3000:]
    assert "AssertionError: tensorflow is not installed: pip install -e '.[interop]' (or the " \
        "README's `pip install -e \".[test,interop,examples]\"`" in done.stdout, \
        done.stdout[-3000:]
