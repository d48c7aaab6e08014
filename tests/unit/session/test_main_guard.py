"""The main guard: every documented example carries it, and a script without it fails at once.

Dask's local workers are spawned processes that import the user's script again. Without
``if __name__ == "__main__":`` each of them would start a session of its own while it is
being bootstrapped; the script used to wait forever. These tests run real scripts in real
interpreters (with a timeout, so a regression shows as a failure, not a stuck suite).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scalable.session.guard import importing_main_in_child

ROOT = Path(__file__).resolve().parents[3]
TIMEOUT_S = 120


def _python_examples() -> list[tuple[str, str]]:
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        for number, match in enumerate(re.finditer(r"```python\n(.*?)```", text, flags=re.S)):
            blocks.append((f"{path.relative_to(ROOT)}#{number + 1}", match.group(1)))
    for path in sorted((ROOT / "examples").rglob("*.py")):
        blocks.append((str(path.relative_to(ROOT)), path.read_text()))
    return blocks


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If):
        return False
    for compare in ast.walk(node.test):
        if isinstance(compare, ast.Compare) and len(compare.ops) == 1 and isinstance(compare.ops[0], ast.Eq):
            sides = [compare.left, *compare.comparators]
            names = {s.id for s in sides if isinstance(s, ast.Name)}
            constants = {s.value for s in sides if isinstance(s, ast.Constant)}
            if names == {"__name__"} and constants == {"__main__"}:
                return True
    return False


def _run(script: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    (cwd / "script.py").write_text(script)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "script.py"], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    return done, time.monotonic() - started


def _init(cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "scalable.cli.main", "init", "scalable.yaml"], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


def test_there_are_examples_to_check():
    assert len(_python_examples()) >= 3


@pytest.mark.parametrize("where,code", _python_examples(), ids=[w for w, _ in _python_examples()])
def test_every_python_example_has_the_main_guard(where, code):
    """At module level an example only imports and defines; everything it runs is guarded."""
    tree = ast.parse(code)
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    unguarded = [node.lineno for node in tree.body
                 if not isinstance(node, allowed) and not _is_main_guard(node)
                 and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    assert any(_is_main_guard(node) for node in tree.body), f"{where}: no `if __name__ == \"__main__\":`"
    assert not unguarded, f"{where}: statements outside the main guard at lines {unguarded}"


def test_readme_api_example_runs_as_pasted(tmp_path):
    """The README's Python API example, pasted into a script after `scalable init`, runs to the end."""
    # the Python API section's (the quickstart's, README.md#1, runs in tests/unit/deploy/test_core_install.py)
    code = next(code for where, code in _python_examples()
                if where.startswith("README.md#") and "LearnedAdvisor.from_history" in code)
    assert "ScalableSession" in code
    _init(tmp_path)
    done, seconds = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "historical runs" in done.stdout


def test_script_without_the_guard_fails_at_once_saying_what_to_add(tmp_path):
    _init(tmp_path)
    script = textwrap.dedent('''
        from scalable import ScalableSession

        def square(i):
            return i * i

        session = ScalableSession.from_yaml("./scalable.yaml", target="local")
        client = session.start()
        print(client.gather([client.submit(square, i, tag="demeter") for i in range(4)]))
        session.close()
    ''')
    done, seconds = _run(script, tmp_path)  # before the guard: TimeoutExpired (it waited forever)
    assert done.returncode != 0
    # the re-importing worker says what to add ...
    assert "MainGuardError" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    # ... and the script itself stops instead of waiting for workers that never come
    assert "WorkerStartError" in done.stderr
    assert "[0, 1, 4, 9]" not in done.stdout
    assert seconds < 60


def test_the_same_script_with_the_guard_runs(tmp_path):
    _init(tmp_path)
    script = textwrap.dedent('''
        from scalable import ScalableSession

        def square(i):
            return i * i

        if __name__ == "__main__":
            session = ScalableSession.from_yaml("./scalable.yaml", target="local")
            client = session.start()
            print(client.gather([client.submit(square, i, tag="demeter") for i in range(4)]))
            session.close()
    ''')
    done, _ = _run(script, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[0, 1, 4, 9]" in done.stdout


def test_detects_exactly_the_reimport_of_main_in_a_spawned_child(tmp_path):
    """True while a spawned child runs the main module again; False in the parent and in the
    child's own work once it is bootstrapped (plain multiprocessing, no Dask)."""
    script = textwrap.dedent('''
        import multiprocessing
        from scalable.session.guard import importing_main_in_child

        seen = importing_main_in_child()
        if multiprocessing.current_process().name != "MainProcess":
            print("child import:", seen, flush=True)

        def work():
            print("child work:", importing_main_in_child(), flush=True)

        if __name__ == "__main__":
            print("parent:", seen, flush=True)
            process = multiprocessing.get_context("spawn").Process(target=work)
            process.start()
            process.join(60)
    ''')
    done, _ = _run(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["parent: False", "child import: True", "child work: False"]
    assert importing_main_in_child() is False
