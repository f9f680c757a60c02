"""The sidecar's ``date`` header format: RFC 9110 IMF-fixdate, as ``email.utils.formatdate``
gives it (the sidecar does not import ``email``; the lab compares the two here)."""

from email.utils import formatdate

from meshlab.proxy.http.headers import http_date, imf_fixdate


def test_imf_fixdate_matches_email_formatdate():
    seconds = [0, 951782400, 1798000000, 2**31 - 1, 4102444799]
    seconds += list(range(1_700_000_000, 1_700_000_000 + 86400 * 400, 86399))
    for sec in seconds:
        assert imf_fixdate(sec) == formatdate(sec, usegmt=True), sec
    assert http_date(1798000000.7) == formatdate(1798000000, usegmt=True).encode()
