"""The suite API: what a suite needs is importable from ``meshlab``, loaded on first use, so
the sidecar (``python -m meshlab.proxy`` in every pod) does not load the framework."""

import json
import re
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


def test_readme_suite_example_imports_only_from_meshlab():
    block = README.read_text().split("A suite is a pytest module", 1)[1].split("```python", 1)[1]
    example = block.split("```", 1)[0]
    imports = re.findall(r"^(?:from|import) (\S+)", example, re.MULTILINE)
    assert imports and set(imports) == {"meshlab"}, imports
    names = re.findall(r"^from meshlab import (.+)$", example, re.MULTILINE)
    for name in ", ".join(names).split(", "):
        assert name.strip() in meshlab.__all__, name
