"""The suite API: what a suite needs is importable from ``meshlab``, loaded on first use, so
the sidecar (``python -m meshlab.proxy`` in every pod) does not load the framework."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import meshlab
from meshlab.checks import TpsAtLeast
from meshlab.experiment import Run
from meshlab.faults.registry import create
from meshlab.polling import wait_until

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_resolves_to_its_module_object():
    for name in meshlab.__all__:
        assert getattr(meshlab, name) is not None, name
    assert meshlab.Run is Run and meshlab.TpsAtLeast is TpsAtLeast
    assert meshlab.wait_until is wait_until and meshlab.create_fault is create
    assert set(meshlab.__all__) <= set(dir(meshlab))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        meshlab.NoSuchThing  # noqa: B018


def test_the_sidecar_does_not_load_the_framework():
    code = ("import json, sys, meshlab.proxy.__main__; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('meshlab.') "
            "and not m.startswith('meshlab.proxy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == ["meshlab.errors"], out


def _readme_example() -> str:
    block = README.read_text().split("A suite is a pytest module", 1)[1].split("```python", 1)[1]
    return block.split("```", 1)[0]


def test_readme_suite_example_imports_only_from_meshlab():
    tree = ast.parse(_readme_example())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert imports and all(isinstance(n, ast.ImportFrom) and n.module == "meshlab"
                           for n in imports), ast.dump(tree)
    for name in (alias.name for n in imports for alias in n.names):
        assert name in meshlab.__all__, name


def test_readme_suite_example_passes_on_the_lab(tmp_path, lab_leftovers):
    """The README's example is a real suite: it runs, and passes, on the local lab."""
    suite = tmp_path / "test_readme_example.py"
    suite.write_text(_readme_example())
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite),
         "--meshlab-lab=readme", f"--meshlab-reports={tmp_path / 'reports'}",
         "--meshlab-prometheus=off", "--meshlab-interval=0"],
        check=False, cwd=README.parent, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "2 passed" in res.stdout, res.stdout[-4000:] + res.stderr
    assert lab_leftovers("readme") == {}
