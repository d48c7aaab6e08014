"""The core install (`pip install scalable-operator`, no extras) is the library and the CLI.

Proven by running them in interpreters where the [operator] extra's modules cannot be imported:
a ``sitecustomize`` on PYTHONPATH (so every process, Dask's spawned workers too) puts a finder
first on ``sys.meta_path`` that refuses kopf, kr8s, kubernetes, dask_kubernetes, aiohttp,
prometheus_client and promql_parser as if they were not installed, and logs who asked. The README's quickstart
runs block by block under it; the operator command and the Kubernetes session target must
then stop with one line naming the pip command, not a traceback. pyproject.toml, the module
list in scalable.extras and the installs of CI, the Makefile and the image are checked against
each other, so an operator dependency slipping back into the core fails here and in lint-imports.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from scalable.extras import OPERATOR_MODULES

ROOT = Path(__file__).resolve().parents[3]
PACKAGE_DIR = ROOT / "operator"
TIMEOUT_S = 300

BLOCKER = textwrap.dedent('''
    """Test-only: the [operator] extra's modules behave as if not installed (tests/unit/deploy/test_core_install.py)."""
    import os
    import sys

    _BLOCKED = frozenset(os.environ["SCALABLE_TEST_BLOCKED"].split(","))
    _LOG = os.environ["SCALABLE_TEST_BLOCKED_LOG"]


    def _importer():
        frame = sys._getframe(2)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
            frame = frame.f_back
        return frame.f_globals.get("__name__", "?") if frame is not None else "?"


    class _NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] not in _BLOCKED:
                return None
            with open(_LOG, "a") as log:
                log.write(f"{_importer()} -> {name}\\n")
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


    sys.meta_path.insert(0, _NotInstalled())
''')


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dist_name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)).lower()


class CoreOnly:
    """Runs commands with the [operator] extra blocked; ``imports_by_scalable()`` lists what
    scalable itself tried to import of it (other libraries probing optional modules, such as
    distributed looking for prometheus_client, are theirs to handle)."""

    def __init__(self, tmp_path: Path) -> None:
        self.site = tmp_path / "site"
        self.site.mkdir()
        (self.site / "sitecustomize.py").write_text(BLOCKER)
        self.log = tmp_path / "blocked-imports.log"
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        # `scalable` and `python` as the README writes them, on this interpreter and this checkout
        for name, command in (("scalable", f'"{sys.executable}" -m scalable.cli.main "$@"'),
                              ("python", f'"{sys.executable}" "$@"')):
            shim = self.bin / name
            shim.write_text(f"#!/bin/sh\nexec {command}\n")
            shim.chmod(0o755)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(self.site), str(PACKAGE_DIR), os.environ.get("PYTHONPATH", "")]),
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "SCALABLE_TEST_BLOCKED": ",".join(OPERATOR_MODULES),
            "SCALABLE_TEST_BLOCKED_LOG": str(self.log),
            "MPLBACKEND": "Agg",
            "COLUMNS": "100",
        }

    def run(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=TIMEOUT_S)

    def attempts(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def imports_by_scalable(self) -> list[str]:
        return [line for line in self.attempts() if line.split(" -> ")[0].startswith("scalable")]


@pytest.fixture
def core_only(tmp_path: Path) -> CoreOnly:
    return CoreOnly(tmp_path)


def _quickstart() -> str:
    """The README's quickstart as one bash script: its bash blocks in order, each python block
    written to the file its first line names; `pip install` lines left out (the blocker stands
    for the core install), after checking they install no extra."""
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"<!-- quickstart:.*?-->\n(.*?)<!-- /quickstart -->", readme, flags=re.S)
    assert section, "README.md: no <!-- quickstart: ... --> ... <!-- /quickstart --> section"
    script = ["set -euo pipefail"]
    for lang, body in re.findall(r"```(bash|python)\n(.*?)```", section.group(1), flags=re.S):
        if lang == "python":
            name = re.match(r"# (\S+\.py)\n", body)
            assert name, f"a quickstart python block must start with '# FILE.py': {body[:60]!r}"
            script += [f"cat > {name.group(1)} <<'QUICKSTART_EOF'", body.rstrip("\n"), "QUICKSTART_EOF"]
            continue
        for line in body.splitlines():
            if line.startswith("pip install"):
                assert "[" not in line.split("#")[0], f"the quickstart installs the core only: {line}"
                continue
            script.append(line)
    return "\n".join(script) + "\n"


def test_the_blocker_really_hides_the_operator_extra(core_only, tmp_path):
    """The proof below is only as good as this: under it kopf cannot be imported, and the
    attempt is logged with its importer."""
    done = core_only.run([sys.executable, "-c", "import scalable.controller.app"], tmp_path)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr
    assert any(line.startswith("scalable.controller.") for line in core_only.attempts()), core_only.attempts()


@pytest.mark.slow
def test_the_readme_quickstart_runs_on_the_core_install(core_only, tmp_path):
    """init, a session on a LocalCluster, telemetry report, advise and evaluate, exactly as the README writes them,
    without the [operator] extra, and without scalable even trying to import it."""
    script = _quickstart()
    assert "scalable init" in script and "python sweep.py" in script
    assert "scalable advise" in script and "scalable evaluate" in script
    done = core_only.run(["bash", "-c", script], tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    here = tmp_path / "quickstart"
    assert (here / "scalable.yaml").is_file()
    assert list((here / ".scalable" / "runs").glob("*/tasks.jsonl")), "the session recorded no runs"
    assert "Top tasks by count" in done.stdout
    assert "Recommendation for run_demeter_scenario" in done.stdout
    assert "LearnedAdvisor" in done.stdout and "jobs scored" in done.stdout
    assert (here / "scalable-evaluate.png").stat().st_size > 1000
    assert "Traceback" not in done.stderr
    assert core_only.imports_by_scalable() == []


def test_every_command_but_the_operator_is_listed_on_the_core_install(core_only, tmp_path):
    done = core_only.run(["scalable", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    for command in ("advise", "train", "evaluate", "init", "telemetry", "session", "operator"):
        assert re.search(rf"^\W*{command}\b", done.stdout, flags=re.M), f"{command} missing:\n{done.stdout}"
    assert core_only.imports_by_scalable() == []


def test_the_operator_command_names_the_extra_instead_of_a_traceback(core_only, tmp_path):
    done = core_only.run(["scalable", "operator", "run", "--all-namespaces"], tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "scalable operator needs the [operator] extra" in lines[0]
    assert "pip install 'scalable-operator[operator]'" in lines[0]


def test_a_kubernetes_session_names_the_extra_before_it_starts(core_only, tmp_path):
    (tmp_path / "sweep.py").write_text(textwrap.dedent('''
        from scalable import ScalableSession
        from scalable.extras import MissingExtraError

        if __name__ == "__main__":
            session = ScalableSession.from_yaml("./scalable.yaml", target="kubernetes")
            try:
                session.start()
            except MissingExtraError as exc:
                print("refused:", exc)
            else:
                raise SystemExit("started without dask-kubernetes")
    '''))
    assert core_only.run(["scalable", "init"], tmp_path).returncode == 0
    done = core_only.run(["python", "sweep.py"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: the session's kubernetes target needs the [operator] extra" in done.stdout
    assert "pip install 'scalable-operator[operator]'" in done.stdout
    assert not list(tmp_path.glob(".scalable/runs/*")), "nothing is recorded for a session that cannot start"


def test_the_operator_commands_help_states_the_controllers_default_allowed_urls():
    """The default is read from the controller only when the command runs (the CLI must not
    import it to list its commands), so the help text states it; here it is checked against it."""
    import inspect

    from scalable.cli.operator import run
    from scalable.controller.prometheus_policy import DEFAULT_ALLOWED_URLS

    option = inspect.signature(run).parameters["prometheus_allowed_urls"].default
    assert option.default is None
    assert ",".join(DEFAULT_ALLOWED_URLS) in option.help


def test_the_core_dependencies_leave_the_operator_extra_out():
    project = _pyproject()["project"]
    core = {_dist_name(r) for r in project["dependencies"]}
    operator = {_dist_name(r) for r in project["optional-dependencies"]["operator"]}
    assert {"kopf", "kr8s", "kubernetes", "dask-kubernetes", "aiohttp", "prometheus-client", "promql-parser"} <= operator
    assert not core & operator, f"in the core and the extra: {core & operator}"
    assert "test" in project["optional-dependencies"] and "ml" in project["optional-dependencies"]


def test_the_blocked_modules_are_exactly_what_the_operator_extra_installs():
    """scalable.extras.OPERATOR_MODULES (what the blocker hides and the messages cover) and the
    [operator] distributions name the same packages."""
    operator = {_dist_name(r) for r in _pyproject()["project"]["optional-dependencies"]["operator"]}
    providers = importlib.metadata.packages_distributions()
    by_module = {module: {_dist_name(d) for d in providers.get(module, [])} for module in OPERATOR_MODULES}
    assert all(by_module.values()), f"not installed here (make install): {[m for m, d in by_module.items() if not d]}"
    assert set().union(*by_module.values()) == operator, by_module


@pytest.mark.parametrize("path,pattern", [
    (".ci/run", r"pip install -q -e '\.\[operator,ml,test\]'"),
    ("Makefile", r"pip install -q -e '\.\[operator,ml,test\]'"),
    ("operator/Dockerfile", r"pip install '\.\[operator\]'"),
])
def test_ci_the_makefile_and_the_image_install_the_extras_they_use(path, pattern):
    text = (ROOT / path).read_text()
    installs = re.findall(r"pip install .*", text)
    assert installs and all(re.search(pattern, line) for line in installs), installs
