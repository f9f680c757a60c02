"""render_index: runs newest first, status and links; broken runs still listed."""

from __future__ import annotations

from meshlab.load import hdr
from meshlab.report import render_index, render_report


def test_index_lists_runs_newest_first_with_status_and_links(tmp_path, journal, write_run):
    older = dict(journal, run_id="20251120-090000-old", started_at="2025-11-20T09:00:00Z",
                 status="passed", name="suites/test_old.py::test_a")
    render_report(write_run(tmp_path, older, "20251120-090000-old"))
    write_run(tmp_path, dict(journal, partial=True, started_at="2025-11-22T08:00:00Z",
                             run_id="20251122-080000-new"), "20251122-080000-new")
    broken = tmp_path / "20251121-000000-broken"
    broken.mkdir()
    (broken / "results.json").write_text("{", encoding="utf-8")
    (tmp_path / "not-a-run").mkdir()

    out = render_index(tmp_path)

    html = out.read_text()
    assert out == tmp_path / "index.html"
    positions = [html.index(run) for run in ("20251122-080000-new", "20251120-090000-old")]
    assert positions == sorted(positions)
    assert 'href="20251120-090000-old/report.html"' in html
    assert 'href="20251122-080000-new/results.json"' in html  # no report rendered yet
    assert "PARTIAL" in html and "PASSED" in html and "UNREADABLE" in html
    assert "not valid JSON" in html and "not-a-run" not in html


def test_index_of_an_empty_folder(tmp_path):
    html = render_index(tmp_path / "reports").read_text()
    assert "No runs yet." in html


def test_index_shows_tps_p99_and_a_trend_per_run_name(tmp_path, journal, write_run):
    name = journal["name"]
    for night, (status, tps_scale) in enumerate([("passed", 1.0), ("failed", 0.5),
                                                 ("passed", 1.0)]):
        run = dict(journal, run_id=f"2025112{night}-010000-nightly", status=status,
                   started_at=f"2025-11-2{night}T01:00:00Z",
                   loads=[dict(load, requests=int(load["requests"] * tps_scale))
                          for load in journal["loads"]])
        write_run(tmp_path, run, run["run_id"], series=False)
    write_run(tmp_path, dict(journal, run_id="other", name="suites/x.py::test_y",
                             loads=[], started_at="2025-11-19T00:00:00Z"), "other",
              series=False)
    (tmp_path / "20251123-broken").mkdir()
    (tmp_path / "20251123-broken" / "results.json").write_text("[]")

    html = render_index(tmp_path).read_text()

    trends = html[html.index('id="trends"'):html.index('id="runs"')]
    row = trends[trends.index(name):trends.index("</tr>", trends.index(name))]
    assert row.count('class="run-box pass"') == 2 and row.count('class="run-box fail"') == 1
    assert row.index("20251120-010000-nightly") < row.index("20251122-010000-nightly")
    assert "2 / 3" in row and row.count('<svg class="spark"') == 2
    assert row.count("<polyline") == 2 and "<script" not in html
    runs = html[html.index('id="runs"'):]
    assert "177.5" in runs and "88.8" in runs  # (5,993 + 9,984) requests / (30 s + 60 s)
    merged = hdr.percentiles(hdr.merge(load["hdr"] for load in journal["loads"]))
    assert f"{merged['p99'] / 1000:,.3f}" in runs  # p99 of both loads' merged histograms
    assert "UNREADABLE" in runs and "20251123-broken" in runs
    other = trends[trends.index("suites/x.py::test_y"):]
    assert "<polyline" not in other[:other.index("</tr>")]  # no load: empty sparkline
