"""render_index: runs newest first, status and links; broken runs still listed."""

from __future__ import annotations

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
