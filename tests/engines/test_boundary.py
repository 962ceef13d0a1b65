"""The engine package holds the protocol and its two engines: it imports no job, no release and no people-side code."""

from __future__ import annotations

import ast
from pathlib import Path

import pipelines.engines

ENGINES = Path(pipelines.engines.__file__).parent
# shared infrastructure every package may use: errors, parameter checks, file modes, the workspace it spills into;
# and the compiled factor solver (numbers in, numbers out: no identifiers, consent or keys), the local half of
# Engine.implicit_factors as scipy is the local half of the connected components, and the compiled string hash it
# numbers rows and columns with (strings in, codes out: no key, no pseudonym), and the helper that works on
# independent pieces two at a time (the local engine's partitions)
ALLOWED = ("pipelines.engines", "pipelines.workspace", "profiling.errors", "profiling.checks", "profiling.file_modes",
           "profiling.factors", "profiling._string_hash", "profiling._threads")
PORTRAIT_PACKAGES = ("dp", "pipelines", "profiling")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_the_engine_package_imports_only_itself_and_shared_infrastructure():
    modules = sorted(ENGINES.glob("*.py"))
    assert {p.name for p in modules} == {"__init__.py", "_components.py", "_exchange.py", "_factors.py",
                                          "_optional.py", "_partitioning.py", "_protocol.py", "local.py", "spark.py"}
    for path in modules:
        ours = [name for name in _imports(path) if name.split(".")[0] in PORTRAIT_PACKAGES]
        outside = [name for name in ours if not any(name == a or name.startswith(a + ".") for a in ALLOWED)]
        assert not outside, f"{path.name} imports {outside}: jobs belong beside the other stages in pipelines/"
