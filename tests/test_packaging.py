"""The project's set-up stays coherent: pyproject, environment files, CI, README, notebooks.

The environment files are read with a minimal line parser (every ``- item`` of a YAML list),
so this test runs without PyYAML; when PyYAML is installed (the ``test`` extra) the files are
also checked to be valid YAML.
"""

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = ["environment.yml", "binder/environment.yml"]
NOTEBOOKS = ROOT / "notebooks"


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_requirements():
    """Runtime dependencies and the ``lab`` extra: what every environment file must install."""
    project = pyproject()["project"]
    reqs = {}
    for line in project["dependencies"] + project["optional-dependencies"]["lab"]:
        req = Requirement(line)
        reqs[canonicalize_name(req.name)] = req
    return reqs


def yaml_list_items(text):
    """Every ``- item`` entry of a YAML file, comments stripped (conda and pip entries alike)."""
    items = []
    for line in text.splitlines():
        m = re.match(r"^\s*-\s+(.*?)\s*(?:\s#.*)?$", line)
        if m and m.group(1) and not m.group(1).endswith(":"):
            items.append(m.group(1).strip("'\""))
    return items


def env_requirements(path):
    """Requirements named in an environment file; conda's ``name=1.2`` reads as ``name==1.2``."""
    reqs = {}
    for item in yaml_list_items((ROOT / path).read_text()):
        if item.startswith("-"):  # pip options such as "-e ."
            continue
        item = re.sub(r"^([A-Za-z0-9_.\-\[\]]+)=(?!=)", r"\1==", item)
        try:
            req = Requirement(item)
        except InvalidRequirement:
            continue
        reqs[canonicalize_name(req.name)] = req
    return reqs


def named_versions(spec: SpecifierSet):
    out = []
    for s in spec:
        if s.operator in ("==", "===", ">=", "~=", "<="):
            try:
                out.append(Version(s.version.rstrip(".*")))
            except InvalidVersion:
                pass
    return out


def compatible(env_spec: SpecifierSet, project_spec: SpecifierSet) -> bool:
    """Some version named by either specifier satisfies both (no pin contradicts the other)."""
    if not env_spec or not project_spec or str(env_spec) == str(project_spec):
        return True
    candidates = named_versions(env_spec) + named_versions(project_spec)
    return any(env_spec.contains(v, prereleases=True) and project_spec.contains(v, prereleases=True)
               for v in candidates)


@pytest.mark.parametrize("path", ENV_FILES)
def test_environment_file_matches_pyproject(path):
    env = env_requirements(path)
    missing, clashing = [], []
    for name, req in pyproject_requirements().items():
        if name not in env:
            missing.append(str(req))
        elif not compatible(env[name].specifier, req.specifier):
            clashing.append(f"{env[name]} (pyproject: {req})")
    assert not missing, f"{path} lacks pyproject dependencies: {missing}"
    assert not clashing, f"{path} pins contradict pyproject.toml: {clashing}"


@pytest.mark.parametrize("path", ENV_FILES)
def test_environment_file_is_valid_yaml_and_installs_the_kit(path):
    text = (ROOT / path).read_text()
    try:
        import yaml
    except ImportError:
        pass
    else:
        data = yaml.safe_load(text)
        assert isinstance(data, dict) and "dependencies" in data, f"{path}: no dependencies"
    deps = [d.replace(" ", "") for d in yaml_list_items(text)]
    assert any(d.startswith("python") for d in deps), f"{path} must pin python"
    assert "pip" in deps, f"{path} must list pip"
    if path.startswith("binder/"):
        post_build = ROOT / "binder" / "postBuild"
        assert post_build.exists() and os.access(post_build, os.X_OK), "binder/postBuild missing"
        assert "pip install" in post_build.read_text(), "binder/postBuild must install the kit"
    else:
        assert any(d.startswith("-e.") for d in deps), f"{path} must install the kit (-e .)"


def test_pins_are_explained():
    """Every exact pin (==) in pyproject and the environment files has a comment nearby."""
    for path in ["pyproject.toml", *ENV_FILES]:
        lines = (ROOT / path).read_text().splitlines()
        for i, line in enumerate(lines):
            code = line.split("#")[0]
            if re.search(r"[A-Za-z0-9_\-\]]==\d", code) or re.search(r"^\s*-\s*python=\d", code):
                window = lines[max(0, i - 3): i + 1]
                assert any("#" in w for w in window), f"{path}:{i + 1}: unexplained pin {line!r}"


def test_version_is_read_from_package():
    cfg = pyproject()
    assert "version" in cfg["project"]["dynamic"]
    assert cfg["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "eacf_lab.__version__"}
    init = (ROOT / "eacf_lab" / "__init__.py").read_text()
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+', init, re.M), "no __version__ in eacf_lab"


def test_ci_runs_make_test():
    ci = ROOT / ".ci" / "run"
    assert ci.exists() and os.access(ci, os.X_OK), ".ci/run must exist and be executable"
    text = ci.read_text()
    assert "set -euo pipefail" in text
    assert re.search(r"^\s*(?:time\s+)?make\b[^\n#]*\btest\b", text, re.M), ".ci/run must call make test"


def test_makefile_and_readme_offer_the_two_commands():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lab", "test", "clean", "help"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile lacks target {target!r}"
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme


def test_notebooks_are_committed_without_outputs():
    assert NOTEBOOKS.is_dir(), "notebooks/ must exist"
    dirty = []
    for nb_path in sorted(NOTEBOOKS.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in nb_path.parts:
            continue
        nb = json.loads(nb_path.read_text())
        rel = nb_path.relative_to(ROOT)
        if "widgets" in nb.get("metadata", {}):
            dirty.append(f"{rel}: saved widget state in metadata")
        for i, cell in enumerate(nb.get("cells", [])):
            if cell.get("cell_type") != "code":
                continue
            if cell.get("outputs") or cell.get("execution_count") is not None:
                dirty.append(f"{rel}: cell {i} has outputs or an execution count")
    assert not dirty, "clear outputs before committing:\n" + "\n".join(dirty)


def test_code_and_notebooks_pass_pyflakes_checks():
    """No unused imports or names, undefined names or syntax errors (ruff's F and E9 rules), in the
    library, the tests, the benchmarks, the scripts and the notebooks (ruff reads .ipynb cells)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e .[test])")
    paths = ["eacf_lab", "tests", "benchmarks", "scripts", "notebooks"]
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F,E9",
                        "--output-format", "concise", *paths], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"ruff check --select F,E9 {' '.join(paths)}:\n{r.stdout}{r.stderr}"


def test_readme_binder_badge_and_binder_environment():
    """README links Binder to JupyterLab on notebooks/; Binder gets JupyterLab 4, ipywidgets 8, nglview 3.1.4, CPU jax."""
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"\(https://mybinder\.org/v2/gh/[^)\s]+/HEAD\?urlpath=lab/tree/notebooks\)", readme), \
        "README needs the Binder badge opening lab/tree/notebooks"
    env = env_requirements("binder/environment.yml")
    for name, version in (("jupyterlab", "4.9"), ("ipywidgets", "8.9"), ("nglview", "3.1.4")):
        assert name in env and env[name].specifier.contains(version), f"binder: {name} must allow {version}"
    assert not env["jupyterlab"].specifier.contains("5.0") and not env["ipywidgets"].specifier.contains("9.0")
    assert "jax" in env and not env["jax"].extras, "binder must install the CPU jax (no [cuda] extra)"


def test_browser_tests_run_in_their_own_pass():
    """`make test` keeps tests/browser out of the xdist passes and runs it once, without xdist."""
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile[makefile.index("\ntest:"):makefile.index("\nclean:")]
    assert test_recipe.count("--ignore=$(BROWSER_TESTS)") == 2, "passes 1 and 2 must ignore tests/browser"
    assert "$(BROWSER_PYTEST)" in test_recipe
    assert re.search(r"BROWSER_PYTEST := EACF_LAB_QUICK=1 .*-p no:xdist", makefile)
    assert "browser" in " ".join(pyproject()["tool"]["pytest"]["ini_options"]["markers"])
