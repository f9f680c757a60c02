"""Load drivers: the runner process (Locust closed loop, or the open-loop schedule of
:mod:`meshlab.load.open_loop`), its µs HdrHistogram recording and the Shell driver.

Importing this package never imports locust or gevent (they live in the runner process only).
"""

from meshlab.load.driver import LoadHandle, LoadResult, SeriesPoint, read_result, runner_argv
from meshlab.load.spec import LoadSpec
from meshlab.load.start import run_load, start_load

__all__ = ["LoadHandle", "LoadResult", "LoadSpec", "SeriesPoint", "read_result", "run_load",
           "runner_argv", "start_load"]
