"""The SSH NodeDriver for real: a real sshd in a lab node's netns, reached from another node.

sshd (``/usr/sbin/sshd``, installed by ``scripts/setup.sh``) listens on worknode6's underlay IP
inside worknode6's netns; the driver connects from worknode5's netns through
:func:`~meshlab.envs.local.netns_socket.netns_connect`, so no packet of the test touches the
host's network namespace. Power-off brings the node's ``eth0`` down *from the SSH session
itself* (the reply can never arrive, as with a real power loss); power-on brings it up again
from the runner, as ``ipmitool`` / ``virsh start`` would.
"""

from __future__ import annotations

import fcntl
import functools
import os
import time
from pathlib import Path

import paramiko
import pytest

from meshlab.envs.base import Shell
from meshlab.envs.local.lab import LocalEnv
from meshlab.envs.local.netns import kill_pids, netns_pids
from meshlab.envs.local.netns_socket import netns_connect, netns_socket
from meshlab.envs.node_driver import NodeDriver
from meshlab.envs.ssh import SshConfig, SshNodeDriver
from meshlab.errors import CommandError, ConfigError, LabError

LAB = "hssh"
NODE = "worknode6"  # runs sshd
CLIENT_NODE = "worknode5"  # the driver connects from here
SSHD = Path("/usr/sbin/sshd")
SIOCGSKNS = 0x894C  # include/uapi/linux/sockios.h: netns fd of a socket


# configuration (no lab) -------------------------------------------------------------------
@pytest.mark.parametrize(("override", "field"), [
    ({"nodes": {}}, "nodes"),
    ({"port": 0}, "port"),
    ({"connect_timeout_s": -1}, "connect_timeout_s"),
    ({"is_up_timeout_s": True}, "is_up_timeout_s"),
    ({"power_off_command": []}, "power_off_command"),
    ({"power_off_command": "poweroff"}, "power_off_command"),
    ({"power_on_command": ["virsh", "start", "{vm}"]}, "power_on_command"),
    ({"strict_host_key_checking": "yes"}, "strict_host_key_checking"),
    ({"socket_factory": 3}, "socket_factory"),
])
def test_config_errors_name_the_field(override, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        SshConfig(**{"nodes": {"n1": "10.0.0.1"}, "key_file": "/k", **override})


def test_config_fills_placeholders_and_driver_checks_files(tmp_path):
    cfg = SshConfig(nodes={"n1": "10.0.0.1"}, key_file=tmp_path / "k", port=2222,
                    power_on_command=["virsh", "start", "vm-{node}", "--host={host}", "{{x}}"])
    assert cfg.command(cfg.power_on_command, "n1") == ["virsh", "start", "vm-n1",
                                                       "--host=10.0.0.1", "{x}"]
    assert cfg.known_hosts_name("n1") == "[10.0.0.1]:2222"
    with pytest.raises(ConfigError, match="^nodes: no host configured for node 'n2'"):
        cfg.host("n2")
    with pytest.raises(ConfigError, match="^key_file: "):
        SshNodeDriver(cfg)
    (tmp_path / "k").write_text("x")
    cfg.known_hosts_file = tmp_path / "missing"
    with pytest.raises(ConfigError, match="^known_hosts_file: "):
        SshNodeDriver(cfg)
    with pytest.raises(ConfigError, match="^power_on_command: not configured"):
        SshNodeDriver(SshConfig(nodes={"n1": "h"}, key_file=tmp_path / "k",
                                strict_host_key_checking=False)).power_on("n1")


# the lab with an sshd ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab(running_lab):
    with running_lab(LAB) as env:  # always torn down, checked leftover-free
        yield env


def _sshd_pids(netns: str) -> list[int]:
    """sshd processes (listener and per-connection children) in ``netns``."""
    found = []
    for pid in netns_pids(netns):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("sshd"):
                found.append(pid)
        except FileNotFoundError:
            pass
    return found


@pytest.fixture(scope="module")
def sshd(lab, tmp_path_factory):
    """sshd on worknode6's IP; yields ``{"dir", "host_key", "client_key", "ip", "netns"}``."""
    if not SSHD.exists():
        pytest.fail(f"{SSHD} missing: run `bash scripts/setup.sh` (installs openssh-server)")
    work = tmp_path_factory.mktemp("sshd")
    work.chmod(0o700)
    host_key, client_key = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    host_key.write_private_key_file(str(work / "host_key"))
    client_key.write_private_key_file(str(work / "client_key"))
    (work / "authorized_keys").write_text(f"{client_key.get_name()} {client_key.get_base64()}\n")
    node = lab.plan.nodes[NODE]
    cfg = work / "sshd_config"
    cfg.write_text("\n".join([
        f"ListenAddress {node.ip}:22", f"HostKey {work / 'host_key'}",
        f"PidFile {work / 'sshd.pid'}", f"AuthorizedKeysFile {work / 'authorized_keys'}",
        "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PrintMotd no",
        "LogLevel VERBOSE", ""]))
    run_sshd = Path("/run/sshd")  # privilege-separation dir sshd insists on
    created_run_sshd = not run_sshd.exists()
    run_sshd.mkdir(mode=0o755, exist_ok=True)
    log = work / "sshd.log"
    proc = lab.node_shell(NODE).popen([str(SSHD), "-D", "-e", "-f", str(cfg)], stderr=log)
    try:
        probe = SshNodeDriver(SshConfig(
            nodes={NODE: node.ip}, key_file=work / "client_key", strict_host_key_checking=False,
            is_up_timeout_s=0.5, socket_factory=_from(lab, CLIENT_NODE)))
        deadline = time.monotonic() + 15
        while not probe.is_up(NODE):
            assert proc.poll() is None, f"sshd exited {proc.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, f"sshd not answering: {log.read_text()}"
            time.sleep(0.05)
        yield {"dir": work, "host_key": host_key, "client_key": work / "client_key",
               "ip": node.ip, "netns": node.netns}
    finally:  # session children first, so the listener reaps them, then the listener
        kill_pids([pid for pid in _sshd_pids(node.netns) if pid != proc.pid])
        proc.terminate()
        proc.wait(timeout=10)
        kill_pids(_sshd_pids(node.netns))
        assert _sshd_pids(node.netns) == []
        if created_run_sshd:
            run_sshd.rmdir()


def _from(lab: LocalEnv, node: str):
    """Socket factory connecting from ``node``'s netns."""
    return functools.partial(netns_connect, lab.plan.nodes[node].netns)


def _known_hosts(path: Path, name: str, *keys: paramiko.PKey) -> Path:
    hk = paramiko.HostKeys()
    for key in keys:
        hk.add(name, key.get_name(), key)
    hk.save(str(path))
    if not keys:
        path.write_text("")
    return path


def _driver(lab, sshd, known_hosts: Path, **kw) -> SshNodeDriver:
    return SshNodeDriver(SshConfig(
        nodes={NODE: sshd["ip"]}, key_file=sshd["client_key"], known_hosts_file=known_hosts,
        connect_timeout_s=2.0, is_up_timeout_s=0.5, socket_factory=_from(lab, CLIENT_NODE), **kw))


@pytest.fixture
def trusted(sshd):
    """A known_hosts file holding sshd's real host key."""
    return _known_hosts(sshd["dir"] / "known_hosts", sshd["ip"], sshd["host_key"])


@pytest.mark.lab
def test_netns_socket_stays_in_lab(lab, host_snapshot):
    """The socket is in the node's netns (SIOCGSKNS), the runner's threads never moved."""
    own = os.readlink("/proc/self/ns/net")
    netns = lab.plan.nodes[CLIENT_NODE].netns
    sock = netns_socket(netns)
    try:
        ns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)  # an fd of the socket's netns
        try:
            assert os.fstat(ns_fd).st_ino == os.stat(f"/run/netns/{netns}").st_ino
        finally:
            os.close(ns_fd)
        assert os.readlink("/proc/self/ns/net") == own
    finally:
        sock.close()
    with pytest.raises(LabError, match="does not exist"):
        netns_socket(f"ml-{LAB}-nope")


@pytest.mark.lab
def test_shell_runs_commands_on_the_node(lab, sshd, trusted, host_snapshot):
    with _driver(lab, sshd, trusted) as driver:
        shell = driver.shell(NODE)
        assert isinstance(shell, Shell)
        res = shell.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
        assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
        assert res.argv[:2] == ["ssh", f"root@{sshd['ip']}"]
        with pytest.raises(CommandError, match="exit 3"):
            shell.run(["sh", "-c", "exit 3"])
        assert shell.run(["printf", "%s|", "a b", "it's", "$HOME"]).stdout == "a b|it's|$HOME|"
        assert shell.run(["cat"], input_text="hello\n").stdout == "hello\n"
        addr = shell.run(["ip", "-o", "-4", "addr", "show", "eth0"]).stdout
        assert f"{sshd['ip']}/" in addr  # ran inside worknode6's netns
        with pytest.raises(LabError, match="timed out after 0.5 s"):
            shell.run(["sleep", "3"], timeout_s=0.5)
        with pytest.raises(LabError, match="popen is not implemented"):
            shell.popen(["sleep", "1"])
        with pytest.raises(ConfigError, match="^nodes: "):
            driver.shell("worknode9")


@pytest.mark.lab
def test_host_key_checking(lab, sshd, host_snapshot):
    empty = _known_hosts(sshd["dir"] / "empty_known_hosts", sshd["ip"])
    with _driver(lab, sshd, empty) as driver:  # strict by default
        with pytest.raises(LabError, match=r"not in known_hosts .*ssh-keyscan") as err:
            driver.shell(NODE).run(["true"])
        assert sshd["host_key"].fingerprint in str(err.value)
    other = paramiko.ECDSAKey.generate()
    wrong = _known_hosts(sshd["dir"] / "wrong_known_hosts", sshd["ip"], other)
    with (_driver(lab, sshd, wrong) as driver,
          pytest.raises(LabError, match=r"CHANGED.*ssh-keygen -R")):
        driver.shell(NODE).run(["true"])
    with (_driver(lab, sshd, wrong, strict_host_key_checking=False) as driver,
          pytest.raises(LabError, match="CHANGED")):  # a changed key is never accepted
        driver.shell(NODE).run(["true"])
    with _driver(lab, sshd, empty, strict_host_key_checking=False) as driver:
        assert driver.shell(NODE).run(["echo", "ok"]).stdout == "ok\n"
    assert empty.read_text() == ""  # an accepted unknown key is never saved


@pytest.mark.lab
def test_power_off_drops_the_node_and_power_on_brings_it_back(lab, sshd, trusted, host_snapshot):
    """Power-off runs ON the node (its reply can never come back), power-on on the runner."""
    marker = sshd["dir"] / "power_on.log"
    power_on = ["sh", "-c", (f"echo {{node}} {{host}} >> {marker}; "
                f"ip -n {sshd['netns']} link set eth0 up")]
    with _driver(lab, sshd, trusted, power_off_command=["ip", "link", "set", "eth0", "down"],
                 power_off_wait_s=1.0, power_off_timeout_s=5.0,
                 power_on_command=power_on) as driver:
        assert isinstance(driver, NodeDriver)
        assert driver.is_up(NODE)
        assert "already up" in driver.power_on(NODE) and not marker.exists()
        msg = driver.power_off(NODE)  # did not raise: the exit status can never come back
        assert "no exit status (connection died)" in msg
        assert not driver.is_up(NODE)
        link = lab.node_shell(NODE).run(["ip", "-o", "link", "show", "eth0"]).stdout
        assert "state DOWN" in link  # the command ran on the node, inside the SSH session
        assert "already off" in driver.power_off(NODE)
        with pytest.raises(LabError, match="cannot connect"):
            driver.shell(NODE).run(["true"])
        assert "exited 0" in driver.power_on(NODE)
        assert marker.read_text() == f"{NODE} {sshd['ip']}\n"  # ran once, on the runner
        took_s = driver.wait_for(NODE, up=True, timeout_s=15)
        assert took_s < 15
        assert driver.shell(NODE).run(["echo", "back"]).stdout == "back\n"


@pytest.mark.lab
def test_failing_power_off_command_raises(lab, sshd, trusted):
    with _driver(lab, sshd, trusted, power_off_command=["sh", "-c", "echo no >&2; exit 7"]) as d:
        with pytest.raises(CommandError, match="exit 7.*: no$"):
            d.power_off(NODE)
        assert d.is_up(NODE)
