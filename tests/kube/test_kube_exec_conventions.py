"""Exec and port-forward as a real API server and kubelet answer them, through the real
``kubernetes`` client and the in-test API server (:mod:`fake_ws`), and the client branches
that handle each answer (:mod:`meshlab.envs.kube.streams`, :mod:`meshlab.envs.kube.process`):

- refused before the WebSocket upgrade with an HTTP error and a ``Status`` body: 404 for a
  missing pod, 400 ``container x is not valid for pod y``, 400 for a pod without a node, 403
  for RBAC (``pods/exec`` needs ``create`` as well as ``get``), 403 with no body when no
  subprotocol is in common;
- after the upgrade, on channel 3: Success, NonZeroExitCode with an ``ExitCode`` cause,
  InternalError without one ("executable file not found"), or no status (connection lost);
- ``v4.channel.k8s.io`` where the server has no v5 (stdin cannot be closed there);
- output cut into frames anywhere, also inside a UTF-8 character.
"""

from __future__ import annotations

import pytest
from fake_ws import V4, V5, CommandNotFound, DropConnection, output_frames

from meshlab.envs.kube.api import ApiError, _status_message
from meshlab.envs.kube.streams import exit_code
from meshlab.errors import CommandError, LabError

NS = "meshlab-lab"
POD = "fortio-server-0"
OFFER = "v5.channel.k8s.io,v4.channel.k8s.io"  # what the installed client offers, in order


def _upgrades(fake):
    return [r for r in fake.requests if r.path.endswith(("/exec", "/portforward"))]


@pytest.mark.parametrize("pod,container,status,message", [
    ("nope-0", "main-app", 404, 'HTTP 404 Not Found: pods "nope-0" not found'),
    (POD, "nope", 400, f"HTTP 400 Bad Request: container nope is not valid for pod {POD}"),
])
def test_an_exec_to_a_missing_pod_or_container_is_refused_before_the_upgrade(
        opted_in_fake, base_lab, pod, container, status, message):
    fake, api = opted_in_fake, base_lab.api
    fake.exec_handler = lambda *a: pytest.fail("the command must not run")
    with pytest.raises(ApiError, match=f"kubectl exec -n {NS} {pod} -c {container} -- ls: "
                                       f"{message} \\(API server http") as err:
        api.exec(NS, pod, container, ["ls"], timeout_s=5)
    assert err.value.status == status
    assert _upgrades(fake)[-1].protocol == ""  # no protocol chosen: never upgraded


def test_an_exec_reaches_ephemeral_containers_too(opted_in_fake, base_lab):
    fake = opted_in_fake
    fake.exec_handler = lambda pod, container, argv, stdin: (0, f"{container}\n", "")
    assert base_lab.pod_shell(POD).run(["ss", "-tin"]).stdout == "meshlab-debug\n"


def test_an_exec_to_a_pod_without_a_node_is_refused(opted_in_fake, base_lab):
    pod = opted_in_fake.pods[(NS, POD)]
    pod["spec"]["nodeName"] = None
    with pytest.raises(LabError, match=f"HTTP 400 Bad Request: pod {POD} does not have a host "
                                       "assigned"):
        base_lab.api.exec(NS, POD, "main-app", ["ls"], timeout_s=5)


@pytest.mark.parametrize("verb", ["create", "get"])
def test_rbac_without_pods_exec_is_a_403_before_the_upgrade(opted_in_fake, base_lab, verb):
    fake = opted_in_fake
    fake.forbid("pods/exec", verb)
    with pytest.raises(ApiError, match=f'HTTP 403 Forbidden: pods "{POD}" is forbidden: User '
                                       f'"tester" cannot {verb} resource "pods/exec" in API '
                                       f'group "" in the namespace "{NS}"') as err:
        base_lab.pod_shell(POD).run(["ls"])
    assert err.value.status == 403


def test_rbac_without_pods_portforward_refuses_the_sidecar_admin_call(opted_in_fake, base_lab):
    opted_in_fake.forbid("pods/portforward", "create")
    with pytest.raises(LabError, match=f"port-forward {NS}/{POD}:15000 GET /stats: HTTP 403 "
                                       'Forbidden: .*cannot create resource "pods/portforward"'):
        base_lab.sidecar_admin(POD, "/stats")


def test_a_command_not_found_is_an_internal_error_not_an_exit_code(opted_in_fake, base_lab,
                                                                    tmp_path):
    def kubelet(pod, container, argv, stdin):
        raise CommandNotFound(argv[0])

    opted_in_fake.exec_handler = kubelet
    shell = base_lab.pod_shell(POD)
    with pytest.raises(LabError, match='-- tcpdump -i any: InternalError: Internal error '
                                       'occurred: error executing command in container: .*exec: '
                                       '"tcpdump": executable file not found in \\$PATH') as err:
        shell.run(["tcpdump", "-i", "any"], check=False)
    assert not isinstance(err.value, CommandError)
    proc = shell.popen(["tcpdump"], stderr=tmp_path / "err")
    assert proc.wait(timeout=10) == 255
    assert '"sh": executable file not found' in (tmp_path / "err").read_text()


def test_a_non_zero_exit_is_the_exit_code_cause(opted_in_fake, base_lab):
    opted_in_fake.exec_handler = lambda pod, container, argv, stdin: (42, "", "boom\n")
    res = base_lab.pod_shell(POD).run(["false"], check=False)
    assert (res.returncode, res.stderr) == (42, "boom\n")


def test_a_dropped_connection_has_no_status(opted_in_fake, base_lab, tmp_path):
    def kubelet(pod, container, argv, stdin):
        raise DropConnection

    opted_in_fake.exec_handler = kubelet
    shell = base_lab.pod_shell(POD)
    with pytest.raises(LabError, match="-- ls: the exec ended without a status "
                                       "\\(connection lost\\)"):
        shell.run(["ls"])
    proc = shell.popen(["sleep", "9"], stderr=tmp_path / "err")
    assert proc.wait(timeout=10) == 255
    assert "connection lost" in (tmp_path / "err").read_text()


@pytest.mark.parametrize("supported,chosen", [((V5, V4), V5), ((V4,), V4), ((V4, V5), V5)])
def test_the_first_protocol_the_client_offers_that_the_server_has_is_chosen(
        opted_in_fake, base_lab, supported, chosen):
    fake = opted_in_fake
    fake.exec_protocols = supported
    fake.exec_handler = lambda pod, container, argv, stdin: (3, "out\n", "err\n")
    res = base_lab.pod_shell(POD).run(["x"], check=False)
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    upgrade = _upgrades(fake)[-1]
    assert upgrade.headers["sec-websocket-protocol"] == OFFER
    assert upgrade.protocol == chosen


def test_stdin_is_closed_on_v5_and_cannot_be_on_v4(opted_in_fake, base_lab):
    fake = opted_in_fake
    fake.exec_handler = lambda pod, container, argv, stdin: (0, stdin.decode()[::-1], "")
    shell = base_lab.pod_shell(POD)
    assert shell.run(["rev"], input_text="abc").stdout == "cba"
    fake.exec_protocols = (V4,)
    with pytest.raises(LabError, match="command timed out after 0.3 s: .* -- rev"):
        shell.run(["rev"], input_text="abc", timeout_s=0.3)


def test_no_protocol_in_common_is_a_403_without_a_body(opted_in_fake, base_lab):
    opted_in_fake.exec_protocols = ("v3.channel.k8s.io",)
    with pytest.raises(ApiError, match=r"-- ls: HTTP 403 Forbidden: Forbidden \(API server"):
        base_lab.pod_shell(POD).run(["ls"])


TEXT = "héllo → wörld ✓\n" * 3


def test_output_cut_inside_utf8_characters_arrives_whole(opted_in_fake, base_lab, tmp_path):
    fake = opted_in_fake
    fake.frame_bytes = 1  # every byte its own frame: each multi-byte character is cut
    fake.exec_handler = lambda pod, container, argv, stdin: (0, TEXT, TEXT.upper())
    res = base_lab.pod_shell(POD).run(["cat"])
    assert (res.stdout, res.stderr) == (TEXT, TEXT.upper())
    proc = base_lab.pod_shell(POD).popen(["cat"], stdout=tmp_path / "out",
                                         stderr=tmp_path / "err")
    assert proc.wait(timeout=10) == 0
    assert (tmp_path / "out").read_text() == TEXT
    assert (tmp_path / "err").read_text() == TEXT.upper()


def test_frames_interleave_stdout_and_stderr():
    assert output_frames(b"abcde", b"xy", 2) == [b"\x01ab", b"\x02xy", b"\x01cd", b"\x01e"]


@pytest.mark.parametrize("status,expected", [
    ('{"metadata":{},"status":"Success"}', 0),
    ((b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
      b'[{"reason":"ExitCode","message":"7"}]}}'), 7),
    ("", "the exec ended without a status \\(connection lost\\)"),
    ("command not found", "exec failed: command not found"),  # v1-v3: plain text
    (('{"status":"Failure","reason":"InternalError","message":"Internal error occurred: x",'
      '"details":{"causes":[{"message":"x"}]}}'), "InternalError: Internal error occurred: x"),
])
def test_exit_code_reads_every_status_shape(status, expected):
    if isinstance(expected, int):
        assert exit_code(status, "cmd") == expected
    else:
        with pytest.raises(LabError, match=f"^cmd: {expected}$"):
            exit_code(status, "cmd")


def test_a_status_message_falls_back_to_the_body_then_the_reason():
    assert _status_message('{"kind":"Status","message":"m"}', "Not Found") == "m"
    assert _status_message("<html>bad gateway</html>", "Bad Gateway") == \
        "<html>bad gateway</html>"  # a proxy's page, not a Status
    assert _status_message(None, "Forbidden") == "Forbidden"
