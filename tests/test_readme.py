"""The README's set-up stays true: CI runs exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    install_and_run, test = re.findall(r"```bash\n(.*?)\n```", setup, re.DOTALL)
    assert "mnstream --source" in install_and_run
    assert test.strip() in (REPO / ".ci" / "run").read_text().splitlines()
