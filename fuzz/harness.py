"""Shared entry point of the atheris harnesses: ``python fuzz/fuzz_<target>.py [libFuzzer
options] [corpus dirs]`` runs coverage-guided fuzzing of one target of :mod:`targets`.

atheris (Google's coverage-guided Python fuzzer on libFuzzer) instruments meshlab's Python code
for coverage; a crash is an exception escaping the target (:class:`targets.Crash` or anything
the target does not document), a hang is an input running longer than ``-timeout`` (1 s by
default here). libFuzzer writes the crashing input to ``-artifact_prefix``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["meshlab", "targets", "h11"]):
    import targets


def main(name: str) -> None:
    """Fuzz ``targets.TARGETS[name]`` with the command line's libFuzzer options."""
    target = targets.TARGETS[name]
    argv = list(sys.argv)
    if not any(a.startswith("-timeout=") for a in argv):
        argv.append("-timeout=1")
    atheris.Setup(argv, target)
    atheris.Fuzz()
