"""The run journal survives failures: activities are recorded even when they raise, and the
file on disk is always a complete JSON document marked partial until the run finishes."""

import json

import pytest

from meshlab.journal import RunJournal


def test_activity_records_success_and_failure(tmp_path):
    j = RunJournal(tmp_path, "suites/test_x.py::test_y")
    on_disk = json.loads(j.path.read_text())
    assert on_disk["status"] == "running" and on_disk["partial"] is True
    with j.activity("load:a") as rec:
        rec["output"] = "10 requests"
    with pytest.raises(RuntimeError), j.activity("inject:x"):
        raise RuntimeError("boom")
    acts = json.loads(j.path.read_text())["activities"]
    assert [a["status"] for a in acts] == ["succeeded", "failed"]
    assert acts[0]["output"] == "10 requests" and acts[1]["error"] == "RuntimeError: boom"
    assert all(set(a) == {"name", "status", "start", "end", "duration_s", "output", "error"}
               for a in acts)
    j.finish("failed")
    final = json.loads(j.path.read_text())
    assert final["status"] == "failed" and final["partial"] is False and final["duration_s"] >= 0


def test_run_ids_do_not_clash(tmp_path):
    a = RunJournal(tmp_path, "t::same", run_id="r")
    b = RunJournal(tmp_path, "t::same", run_id="r")
    assert a.dir != b.dir and b.dir.name == "r-2"
