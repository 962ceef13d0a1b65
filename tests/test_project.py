"""The project's promises about itself: public names import, README and CI agree."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("package", ["profiling", "dp", "pipelines"])
def test_every_public_name_imports(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None
    assert (ROOT / package / "py.typed").exists()


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_states_two_commands():
    install_and_run, test = _readme_commands()
    assert install_and_run == "python -m pip install . && portrait demo"
    assert "'.[test,spark,notebooks]'" in test and "pytest" in test


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci.splitlines()
    assert "python3 -m venv" in ci.replace('"$PYTHON"', "python3")
