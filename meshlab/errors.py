"""One error hierarchy for meshlab, rooted at :class:`MeshlabError`.

Two branches keep "the experiment is wrong" apart from "the system under test misbehaved":

- :class:`ConfigError` (and :class:`ManifestError`): the manifest, suite option or experiment is
  invalid. Raised before anything is built, so nothing is left half-done.
- :class:`LabError`: building, running or tearing down the lab failed (a command exited non-zero,
  a pod never became ready).
- :class:`SystemUnderTestError`: the mesh did something a check does not accept; raised by checks
  (it is also an ``AssertionError`` so pytest reports it as a test failure, not an error).

Two more name what a run could not do rather than what went wrong: :class:`Unsupported` (a
:class:`ConfigError`: the env cannot do what the suite asks, e.g. a fault or a measurement the
kube env does not have) and :class:`MissingMeasurement` (a dry run measured nothing, and a suite
needed the real value of what it did not measure; see :mod:`meshlab.missing`).

Third-party exceptions are translated at the boundary that calls the library.
"""

from __future__ import annotations


class MeshlabError(Exception):
    """Root of every error meshlab raises on purpose."""


class ConfigError(MeshlabError):
    """An invalid suite option, CLI argument or experiment definition."""


class ManifestError(ConfigError):
    """A manifest file is malformed or uses something meshlab does not support.

    Args:
        path: the manifest file.
        field: dotted path of the offending field inside the document, e.g.
            ``StatefulSet/fortio-server.spec.template.spec.containers[0].image``.
        message: what is wrong with it.

    ``str(err)`` is a single line ``<path>: <field>: <message>``.
    """

    def __init__(self, path: str, field: str, message: str) -> None:
        self.path = str(path)
        self.field = field
        self.message = message
        super().__init__(f"{self.path}: {field}: {message}")


class Unsupported(ConfigError):
    """The env cannot do what the suite or the fault asks (a capability it lacks, e.g. per-pod
    DNS query counts on a cluster); the message names the env and what it lacks. A dry run
    reports it as a skip naming the refusal, a real run as a failure."""


class LabError(MeshlabError):
    """The lab could not be built, driven or torn down."""


class CommandError(LabError):
    """A command run through a :class:`~meshlab.envs.base.Shell` exited non-zero.

    Args:
        argv: the command that ran.
        returncode: its exit status.
        stdout: what it printed on stdout (decoded, possibly truncated).
        stderr: what it printed on stderr (decoded, possibly truncated).
    """

    def __init__(self, argv: list[str], returncode: int, stdout: str = "", stderr: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        cmd = " ".join(self.argv)
        detail = (stderr or stdout).strip().splitlines()
        tail = f": {detail[-1]}" if detail else ""
        super().__init__(f"command failed (exit {returncode}): {cmd}{tail}")


class SystemUnderTestError(MeshlabError, AssertionError):
    """A check found the mesh outside what the experiment accepts (a failed verdict)."""


class MissingMeasurement(MeshlabError):
    """A dry run measured nothing, and a suite used an unmeasured value where only a real one
    will do: ``int()``, ``float()``, a format spec such as ``:.1f``, an index, ``len()`` or
    iteration of a :class:`~meshlab.missing.Missing`. The pytest plugin reports the test as
    skipped ``dry run: <what> not measured``; a real run never raises it (it has no Missing).

    Args:
        what: what was not measured, e.g. ``"latency_us['p99'] of load 'drop-50'"``.

    Attributes:
        what: as given.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what} not measured (dry run)")
