"""The SRE review sections: windows table, collector series, per hop, environment,
Prometheus, raw-data links, partial runs, and validation of collectors / prometheus."""

from __future__ import annotations

import re

import pytest
from _journals import T0

from meshlab.errors import ConfigError
from meshlab.report import render_report


def _section(html: str, name: str) -> str:
    start = html.index(f'<section id="{name}">')
    return html[start:html.index("</section>", start)]


def test_windows_table_compares_steady_state_fault_and_recovery(tmp_path, journal, write_run):
    html = render_report(write_run(tmp_path, journal)).read_text()

    windows = _section(html, "windows")
    poweroff = windows[windows.index("<h3>poweroff</h3>"):]
    assert [m for m in re.findall(r"<strong>([^<]+)</strong>", poweroff)] == [
        "steady state", "node-poweroff worknode6", "recovery"]
    assert "99.9" in poweroff and "201.727" in poweroff  # halved TPS, slow max in the window
    assert "UF ×40" in poweroff and "fortio-server-0" in poweroff
    assert "not collected" not in windows


def test_series_section_charts_gaps_and_notes(tmp_path, journal, write_run):
    html = render_report(write_run(tmp_path, journal)).read_text()

    series = _section(html, "series")
    assert "truncated last line skipped" in series
    assert "Errors by response flag per second — fortio-server-0" in series
    assert "No error responses logged by: fortio-server-l2-0." in series
    for title in ("TCP retransmitted segments/s", "TCP unacked segments", "TCP RTT p99",
                  "TCP sockets by state — fortio-server-l2-0", "Conntrack entries per netns"):
        assert title in series, title
    assert series.count('class="gap"') >= 5 and "no data 53 s to 73 s" in series
    assert "Always 0 (not drawn): fortio-server-l2-0 listener :15006." in series
    gaps = series[series.index('id="series-gaps"'):]
    assert gaps.count("<tr class=\"bad\">") == 4 and "admin timeout" in gaps


def test_missing_series_files_and_sections_say_not_collected(tmp_path, journal, write_run):
    journal["collectors"]["files"] = {"sockets": "series/sockets.jsonl"}
    del journal["prometheus"]

    html = render_report(write_run(tmp_path, journal)).read_text()

    for what in ("Access-log series", "Envoy stats series", "Conntrack series",
                 "Prometheus queries"):
        assert f"{what}: not collected" in html, what
    assert "TCP sockets by state — netshoot" in html
    assert "response flags</th>" in html and ">not collected</span>" in _section(html, "windows")


def test_environment_prometheus_and_raw_links(tmp_path, journal, write_run):
    run_dir = write_run(tmp_path, journal)
    (run_dir / "load-poweroff.json").write_text("{}")

    html = render_report(run_dir).read_text()

    env = _section(html, "environment")
    assert "6.18.44" in env and "net.ipv4.tcp_keepalive_time" in env
    assert "Settings changed by faults" in env and "node-poweroff worknode6" in env
    prom = _section(html, "prometheus")
    assert prom.index("requests_total") < prom.index("requests_by_response_flags") \
        < prom.index("sidecar_cpu_seconds") < prom.index("sidecar_memory_bytes")
    assert "response_flags=UF" in prom and "35,796" in prom and "window 92.0 s" in prom
    raw = _section(html, "raw")
    for href in ("results.json", "smp.json", "load-poweroff.json", "series/envoy_stats.jsonl",
                 "series/conntrack.jsonl"):
        assert f'href="{href}"' in raw, href
    hops = _section(html, "hops")
    assert hops.index("fortio-client-0") < hops.index("fortio-server-0") \
        < hops.index("fortio-server-l2-0")


def test_collectors_that_never_stopped_make_the_report_partial(tmp_path, journal, write_run):
    journal["collectors"]["ended_epoch_s"] = None

    html = render_report(write_run(tmp_path, journal)).read_text()

    assert 'class="banner partial"' in html and "collectors never stopped" in html
    assert "never stopped" in _section(html, "series")


def test_a_killed_run_without_loads_still_charts_its_series(tmp_path, journal, write_run):
    journal.update(status="running", partial=True, loads=[], verdicts=[], ended_at=None)
    journal["collectors"]["ended_epoch_s"] = None

    html = render_report(write_run(tmp_path, journal)).read_text()

    assert "PARTIAL" in html and html.count('<svg class="chart"') >= 2


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda j: j["collectors"].update(interval_s=0), "collectors.interval_s"),
    (lambda j: j["collectors"].update(started_epoch_s="now"), "collectors.started_epoch_s"),
    (lambda j: j["collectors"]["files"].update(sockets=3), "collectors.files.sockets"),
    (lambda j: j.update(collectors=[]), "collectors"),
    (lambda j: j["prometheus"]["queries"][1]["result"][0].update(value="45"),
     "prometheus.queries[1].result[0].value"),
    (lambda j: j["prometheus"]["queries"][0].pop("name"), "prometheus.queries[0].name"),
    (lambda j: j["prometheus"].update(window=[T0]), "prometheus.window"),
    (lambda j: j["loads"][0]["series"][2].update(hdr=7), "loads[0].series[2].hdr"),
])
def test_bad_collectors_or_prometheus_fields_are_named(tmp_path, journal, write_run, mutate,
                                                       field):
    mutate(journal)
    run_dir = write_run(tmp_path, journal, series=False)

    with pytest.raises(ConfigError) as info:
        render_report(run_dir)

    assert str(info.value).startswith(f"{run_dir / 'results.json'}: {field}: "), info.value
