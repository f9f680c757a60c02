"""``meshlab.polling.wait_until``: returns the first value that satisfies the condition, and
fails with the last value seen when the deadline passes."""

import itertools

import pytest

from meshlab.polling import PollTimeout, wait_until


def test_returns_the_first_value_that_holds():
    counter = itertools.count()
    assert wait_until(lambda: next(counter), lambda v: v >= 3, timeout_s=5, every_s=0) == 3


def test_timeout_names_what_and_the_last_value():
    with pytest.raises(PollTimeout, match=r"the flag: not seen within 0.05 s \(last: 'no'\)"):
        wait_until(lambda: "no", lambda v: v == "yes", timeout_s=0.05, what="the flag",
                   every_s=0.01)
    assert issubclass(PollTimeout, AssertionError)  # pytest reports it as a test failure
