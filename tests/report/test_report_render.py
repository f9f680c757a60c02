"""render_report: sections, escaping, offline-ness, partial runs, malformed journals."""

from __future__ import annotations

import json
import re

import pytest

from meshlab.errors import ConfigError
from meshlab.report import render_report
from meshlab.report.charts import FAULT_FILL

SECTIONS = ("header", "status", "summary", "windows", "verdicts", "charts", "faults", "series",
            "series-flags", "series-tcp", "series-sockets", "series-containers", "series-conntrack",
            "series-gaps",
            "errors", "hops", "response-flags", "access-logs", "activities", "topology",
            "environment", "prometheus", "raw")


def test_report_contains_every_section(tmp_path, journal, write_run):
    out = render_report(write_run(tmp_path, journal))

    html = out.read_text(encoding="utf-8")
    assert out.name == "report.html"
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    assert "suites/test_node_poweroff.py::test_tps_recovers" in html
    assert 'class="banner failed"' in html and "FAILED" in html
    assert "not collected" not in html


def test_summary_shows_latency_in_ms_with_us_precision(tmp_path, journal, write_run):
    html = render_report(write_run(tmp_path, journal)).read_text()

    summary = html[html.index('id="summary"'):html.index('id="verdicts"')]
    for text in ("baseline", "poweroff", "0.700", "1.120", "2.170", "4.101", "5.200",
                 "924.600", "0.150 %", "9,984"):
        assert text in summary, text


def test_verdicts_flags_topology_and_env_are_listed(tmp_path, journal, write_run):
    html = render_report(write_run(tmp_path, journal)).read_text()

    assert html.count('class="badge pass">PASS') == 1
    assert html.count('class="badge fail">FAIL') == 1
    assert "p99 latency of load &#39;poweroff&#39; is 89.28 ms" in html
    flags = html[html.index('id="response-flags"'):html.index('id="access-logs"')]
    assert "upstream connection failure" in flags and "UF,URX" in flags
    assert "none (normal response)" in flags
    assert "<details>" in html and "&#34;response_flags&#34;:&#34;UF&#34;" in html
    topology = html[html.index('id="topology"'):html.index('id="environment"')]
    for text in ("worknode6", "10.244.2.0/24", "10.244.2.9", "not meshed", "10.96.0.12",
                 "8080/http, 8070/http-proxy"):
        assert text in topology, text
    assert "net.ipv4.tcp_retries2" in html and "6.18.44" in html
    assert "+54.0 s" in html  # activity offset from the run start


def test_charts_are_inline_svg_with_the_fault_window_shaded(tmp_path, journal, write_run):
    html = render_report(write_run(tmp_path, journal)).read_text()

    # 2 loads × (TPS + latency), errors by flag at L1 only, 3 tcp_stats, 3 pods' socket
    # states, L1's container CPU + CFS throttling, L1's DNS queries, 2 conntrack charts
    assert html.count('<svg class="chart"') == 4 + 1 + 3 + 3 + 2 + 1 + 2
    # one run axis: every chart shows the window
    assert html.count('class="fault-window"') == 16
    dns = html[html.index('id="series-dns"'):html.index('id="series-conntrack"')]
    assert "DNS queries/s to kube-dns by pod" in dns and "fortio-server-0" in dns
    assert "netshoot-0" not in dns  # a pod that sent none is left out
    containers = html[html.index('id="series-containers"'):html.index('id="series-dns"')]
    assert "CPU by container (cores) — fortio-server-0" in containers
    assert "istio-proxy limit" in containers and "CFS throttling" in containers
    assert f'fill="{FAULT_FILL}"' in html
    assert "requests/s" in html and "latency (ms)" in html
    assert "time since collectors started (s)" in html and "time since load start" not in html


def test_charts_fall_back_to_the_load_axis_without_collectors(tmp_path, journal, write_run):
    del journal["collectors"]

    html = render_report(write_run(tmp_path, journal)).read_text()

    assert html.count('<svg class="chart"') == 4  # TPS + latency for each of the two loads
    assert html.count('class="fault-window"') == 2  # only the poweroff load overlaps it
    assert "time since load start (s)" in html
    assert "Collector series: not collected" in html


def test_report_references_no_external_resource(tmp_path, journal, write_run):
    html = render_report(write_run(tmp_path, journal)).read_text()

    assert "<script" not in html.lower()
    assert "<link" not in html.lower()
    assert "@import" not in html
    refs = re.findall(r"""(?:src|href|xlink:href|action)\s*=\s*["']?([^"'\s>]+)""", html, re.IGNORECASE)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", html, re.IGNORECASE)
    external = [ref for ref in refs if re.match(r"(https?:)?//", ref, re.IGNORECASE)]
    assert external == []


def test_journal_strings_are_escaped(tmp_path, journal, write_run):
    journal["loads"][0]["name"] = "<script>alert(1)</script>"
    journal["fault_windows"][0]["name"] = '<img src="http://evil.example/x.png">'
    journal["name"] = "<b>bold</b>"

    html = render_report(write_run(tmp_path, journal)).read_text()

    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "<img" not in html and "&lt;img src=" in html
    assert "<b>bold</b>" not in html


@pytest.mark.parametrize("change", [{"partial": True}, {"status": "running", "ended_at": None}])
def test_partial_journal_renders_a_partial_banner(tmp_path, journal, write_run, change):
    journal.update(change)
    del journal["verdicts"]

    html = render_report(write_run(tmp_path, journal)).read_text()

    assert 'class="banner partial"' in html
    assert "PARTIAL" in html
    assert "Verdicts: not collected" in html


def test_minimal_journal_renders_every_section_as_not_collected(tmp_path, write_run):
    minimal = {"schema": "meshlab.run/1", "run_id": "r1", "status": "error"}

    html = render_report(write_run(tmp_path, minimal)).read_text()

    for what in ("Loads", "Verdicts", "Load time series", "Fault windows", "Status counts",
                 "Sidecar response flags", "Access logs", "Activities", "Topology",
                 "Environment facts", "Collector series", "Sidecar access logs",
                 "Prometheus queries"):
        assert f"{what}: not collected" in html, what
    assert "ERROR" in html


def test_odd_series_do_not_crash(tmp_path, journal, write_run):
    baseline, poweroff = journal["loads"]
    baseline["series"] = []
    poweroff["series"] = [{"t_s": 0, "requests": 0, "errors": 0, "p50_us": None,
                           "p90_us": None, "p99_us": None}]
    poweroff.pop("start_epoch_s")
    journal["fault_windows"].append({"name": "still-open", "start_epoch_s": 1.0,
                                     "end_epoch_s": None})
    journal["sidecars"]["fortio-client-0"] = {}
    journal["env"] = {"kernel": "6.1.0"}

    html = render_report(write_run(tmp_path, journal)).read_text()

    assert "no data" in html
    assert "this load has no start_epoch_s" in html
    assert "still active" in html
    assert "Sysctls: not collected" in html


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda j: j["loads"][1]["latency_us"].update(p99="fast"), "loads[1].latency_us.p99"),
    (lambda j: j.pop("status"), "status"),
    (lambda j: j.update(status="green"), "status"),
    (lambda j: j.update(schema="other/1"), "schema"),
    (lambda j: j["loads"][0].pop("name"), "loads[0].name"),
    (lambda j: j["loads"][0]["series"][3].update(t_s="3"), "loads[0].series[3].t_s"),
    (lambda j: j["sidecars"]["fortio-server-0"].update(response_flags=[]),
     "sidecars.fortio-server-0.response_flags"),
    (lambda j: j["verdicts"][0].update(passed="yes"), "verdicts[0].passed"),
    (lambda j: j.update(fault_windows={}), "fault_windows"),
])
def test_malformed_journal_raises_config_error_naming_file_and_field(
        tmp_path, journal, write_run, mutate, field):
    mutate(journal)
    run_dir = write_run(tmp_path, journal)

    with pytest.raises(ConfigError) as info:
        render_report(run_dir)

    message = str(info.value)
    assert message.startswith(f"{run_dir / 'results.json'}: {field}: "), message
    assert not (run_dir / "report.html").exists()


def test_unreadable_journal_raises_config_error(tmp_path):
    (tmp_path / "results.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"results\.json: <document>: not valid JSON"):
        render_report(tmp_path)
    with pytest.raises(ConfigError, match=r"missing.results\.json: cannot read"):
        render_report(tmp_path / "missing")
    (tmp_path / "results.json").write_text(json.dumps([1, 2]), encoding="utf-8")
    with pytest.raises(ConfigError, match="results.json: <document>: expected an object"):
        render_report(tmp_path)
