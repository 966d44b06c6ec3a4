"""The README's set-up stays true: CI runs exactly its test command."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import ASSETS, REPO, require_asset


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    install_and_run, test = re.findall(r"```bash\n(.*?)\n```", setup, re.DOTALL)
    assert "mnstream --source" in install_and_run
    assert test.strip() in (REPO / ".ci" / "run").read_text().splitlines()


def from_python_examples() -> list[tuple[str, str]]:
    """The "From Python" section's examples: each Python block with the text block after it, what it prints."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)\n```\n\n```text\n(.*?)\n```", section, re.DOTALL)


def test_the_readme_shows_three_python_examples_with_their_output() -> None:
    assert len(from_python_examples()) == 3


@pytest.mark.parametrize(("code", "printed"), from_python_examples(), ids=["callback", "generator", "classifier"])
def test_each_python_example_prints_what_the_readme_says(code: str, printed: str) -> None:
    # given the shared assets the examples name, found from the repository root as ../shared
    for asset in re.findall(r'"\.\./shared/([^"{]+)"', code):
        require_asset(asset)
    if ASSETS != (REPO.parent / "shared").resolve():
        code = code.replace('"../shared/', f'"{ASSETS}/')

    # when it runs as written, from the repository root
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )

    # then it prints what the README shows, and the library itself nothing
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed + "\n"
    assert done.stderr == ""
