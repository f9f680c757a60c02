"""No credential leaks into what a kube run leaves behind (issue #17, security): with a
kubeconfig that carries a bearer token and a client key, and SSH settings that name a private
key, a whole run on the kube env — and the same run as a dry run — writes a journal, a report
and a printout that contain none of them (paths may appear; secrets may not). Against the
in-test API server."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "kube"))
from kube_fake_server import OPT_IN, FakeKube
from test_chaos_kube import IptablesRules, _experiment

TOKEN = "s3cr3t-bearer-token-4f9c2a"
CLIENT_KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIClientKeyBodyNotForLogs42\n" \
             "-----END EC PRIVATE KEY-----\n"
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEsshBodyNotForLogs\n" \
          "-----END OPENSSH PRIVATE KEY-----\n"
NEEDLES = (TOKEN, "ClientKeyBodyNotForLogs", "sshBodyNotForLogs", "PRIVATE KEY",
           base64.b64encode(CLIENT_KEY.encode()).decode()[:40])


def _config(fake: FakeKube, tmp_path: Path, dry_run: bool) -> dict[str, object]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "tester", "user": {
            "token": TOKEN,
            "client-key-data": base64.b64encode(CLIENT_KEY.encode()).decode()}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}]}))
    key = tmp_path / "id_chaos"
    key.write_text(SSH_KEY)
    settings = tmp_path / "kube.yaml"
    settings.write_text(yaml.safe_dump({
        "kubeconfig": str(kubeconfig), "ready_timeout_s": 5.0,
        "ssh": {"nodes": {"worknode5": "10.0.0.5", "worknode6": "10.0.0.6"},
                "key_file": str(key)}}))
    return {"meshlab_env": "kube", "meshlab_lab": "ctsec", "meshlab_kube_config": str(settings),
            "meshlab_reports": str(tmp_path / "reports"), "meshlab_dry_run": dry_run}


def _leaks(texts: dict[str, str]) -> list[str]:
    return [f"{name}: {needle[:20]}…" for name, text in texts.items() for needle in NEEDLES
            if needle in text]


def test_no_token_client_key_or_ssh_key_in_reports_journals_or_printouts(tmp_path, capsys):
    for dry_run in (False, True):
        folder = tmp_path / ("dry" if dry_run else "real")
        folder.mkdir()
        with FakeKube() as fake:
            for node in ("worknode5", "worknode6"):
                fake.add_node(node, OPT_IN)
            fake.exec_handler = IptablesRules()
            _experiment(_config(fake, folder, dry_run))
        written = {str(p.relative_to(folder)): p.read_text(errors="replace")
                   for p in (folder / "reports").rglob("*") if p.is_file()}
        assert any(name.endswith("results.json") for name in written)
        assert any(name.endswith("report.html") for name in written)
        printed = capsys.readouterr()
        assert _leaks({**written, "stdout": printed.out, "stderr": printed.err}) == []
        # the scan finds them where they are (its positive control)
        secrets = {p.name: p.read_text() for p in (folder / "kubeconfig", folder / "id_chaos")}
        assert len(_leaks(secrets)) >= 4
