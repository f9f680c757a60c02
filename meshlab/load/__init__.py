"""Load drivers: the Locust runner process, its µs HdrHistogram recording and the Shell driver.

Importing this package never imports locust or gevent (they live in the runner process only).
"""

from meshlab.load.driver import (
                                 LoadHandle,
                                 LoadResult,
                                 SeriesPoint,
                                 read_result,
                                 run_load,
                                 runner_argv,
                                 start_load,
)
from meshlab.load.spec import LoadSpec

__all__ = ["LoadHandle", "LoadResult", "LoadSpec", "SeriesPoint", "read_result", "run_load",
           "runner_argv", "start_load"]
