"""The dedicated sshd's listening socket (server/listener.py): the drop-in the generator writes for
library-syncer-sshd.socket from [server], the generator itself, `check`'s reading of the
congestion control the kernel really uses (server/sockdiag.py, against `ss`), on loopback.

That systemd applies the drop-in and that the sites' connections inherit the algorithm is proved
in a booted systemd on each tested suite (tests/test_server_system.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.base.errors import ConfigError
from library_syncer.host import check
from library_syncer.server import listener, sockdiag

TOP = Path(__file__).resolve().parent.parent
GENERATOR = TOP / "systemd" / "library-syncer-sshd-generator"
SOCKET_UNIT = TOP / "systemd" / "library-syncer-sshd.socket"
SOURCE = Path("/etc/library-syncer/library-syncer.toml")


def _server(**settings: object) -> config_module.Config:
    return config_module.parse({"server": settings}, SOURCE)


def _socket_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_by_default_every_address_on_2222_with_bbr() -> None:
    assert _socket_lines(listener.dropin_text(_server(), SOURCE)) == [
        "[Socket]", "ListenStream=", "ListenStream=2222", "TCPCongestion=bbr"]


def test_addresses_of_both_families_with_freebind_and_the_system_default() -> None:
    config = _server(listen=["192.0.2.10", "2001:db8::10"], port=2200, congestion_control="")
    assert _socket_lines(listener.dropin_text(config, SOURCE)) == [
        "[Socket]", "ListenStream=", "ListenStream=192.0.2.10:2200",
        "ListenStream=[2001:db8::10]:2200", "FreeBind=yes"]
    assert f"from [server] in {SOURCE}" in listener.dropin_text(config, SOURCE)


@pytest.mark.parametrize("value", ["BBR", "bbr cubic", "a" * 16, 5, "tcp-bbr"])
def test_a_congestion_control_that_is_no_kernel_name_is_refused(value: object) -> None:
    with pytest.raises(ConfigError) as error:
        _server(congestion_control=value)
    (problem,) = error.value.problems
    assert problem.key == "server.congestion_control"
    assert '"bbr" or "cubic"' in problem.expected


def test_the_socket_unit_with_the_drop_in_passes_systemd_verify(tmp_path: Path) -> None:
    (tmp_path / SOCKET_UNIT.name).write_text(SOCKET_UNIT.read_text())
    service = (TOP / "systemd" / "library-syncer-sshd.service").read_text()
    entry = Path(sys.executable).parent / "library-syncer"
    (tmp_path / "library-syncer-sshd.service").write_text(
        service.replace("/usr/bin/library-syncer", str(entry)))
    dropin = listener.dropin_path(tmp_path)
    dropin.parent.mkdir()
    dropin.write_text(listener.dropin_text(_server(listen=["127.0.0.1"]), SOURCE))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no",
                             str(tmp_path / SOCKET_UNIT.name)],
                            capture_output=True, text=True, env=dict(
                                os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:"))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def _run_generator(settings_dir: Path, out: Path) -> subprocess.CompletedProcess:
    """The installed script as systemd runs it: its three directories as arguments."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(TOP),
           "CONFIGURATION_DIRECTORY": str(settings_dir)}  # where it finds the settings file
    argv = [sys.executable, str(GENERATOR), str(out), str(out / "early"), str(out / "late")]
    return subprocess.run(argv, capture_output=True, text=True, env=env)


def test_the_generator_writes_the_drop_in_from_the_settings_file(tmp_path: Path) -> None:
    settings = tmp_path / "etc"
    settings.mkdir()
    file = settings / "library-syncer.toml"
    file.write_text('[server]\nlisten = ["127.0.0.1"]\nport = 2299\ncongestion_control = "reno"\n')
    out = tmp_path / "generator"
    result = _run_generator(settings, out)
    assert result.returncode == 0 and not result.stderr, result.stderr
    written = listener.dropin_path(out).read_text()
    assert written == listener.dropin_text(config_module.load(file), file)
    assert "ListenStream=127.0.0.1:2299" in written and "TCPCongestion=reno" in written
    assert not listener.socket_outdated(config_module.load(file), out)
    file.write_text('[server]\nport = 2300\n')
    assert listener.socket_outdated(config_module.load(file), out)  # until systemd reloads


def test_the_generator_never_fails_the_boot(tmp_path: Path) -> None:
    settings, out = tmp_path / "etc", tmp_path / "generator"
    settings.mkdir()
    missing = _run_generator(settings, out)  # no settings file: the socket's condition skips it
    assert missing.returncode == 0 and not missing.stderr and not out.exists()
    (settings / "library-syncer.toml").write_text("[server]\nport = 0\n")
    broken = _run_generator(settings, out)
    assert broken.returncode == 0 and not listener.dropin_path(out).exists()
    (line,) = broken.stderr.splitlines()
    assert line.startswith("library-syncer-sshd-generator: ") and "server.port" in line
    assert line.endswith("library-syncer-sshd.socket keeps its defaults (port 2222, every "
                         "address, the system's congestion control)")
    assert listener.generate([]) == 2


# --- what the kernel says: sock_diag, against ss -------------------------------------------


@contextlib.contextmanager
def _listening(congestion: str, host: str = "127.0.0.1") -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
        sock.bind((host, 0))
        sock.listen()
        yield sock


def _ss(port: int, state: str) -> list[str]:
    """The algorithm names `ss -tni` prints for the sockets on local port `port`."""
    out = subprocess.run(["ss", "-Htni", "state", state, "sport", "=", f":{port}"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(("\t", " "))]


@pytest.mark.parametrize("algorithm", ["reno", "cubic", "bbr"])
def test_sock_diag_reads_what_ss_shows_for_a_listener_and_what_it_accepts(
        algorithm: str) -> None:
    with _listening(algorithm) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client, \
                server.accept()[0] as accepted:
            found = sockdiag.tcp_sockets(port)
            listening = [s for s in found if s.listening]
            connected = [s for s in found if not s.listening]
            assert [(s.local, s.congestion) for s in listening] == [("127.0.0.1", algorithm)]
            # the accepted connection inherited the listener's algorithm
            assert [(s.remote_port, s.congestion) for s in connected] == [
                (client.getsockname()[1], algorithm)]
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16
                                       ).rstrip(b"\0").decode() == algorithm
            assert _ss(port, "listening") == [algorithm]
            assert _ss(port, "established") == [algorithm]


def test_sock_diag_sees_ipv6_listeners() -> None:
    with _listening("reno", "::1") as server:
        port = server.getsockname()[1]
        assert [(s.family, s.local, s.congestion) for s in sockdiag.tcp_sockets(port)] == [
            (socket.AF_INET6, "::1", "reno")]


# --- check ----------------------------------------------------------------------------------


def _check(port: int, **settings: object) -> list[str]:
    return [str(r) for r in check.check_listener(_server(port=port, **settings))]


def test_check_reports_the_algorithm_the_listener_hands_out() -> None:
    with _listening("bbr") as server:
        port = server.getsockname()[1]
        assert _check(port, listen=["127.0.0.1"]) == [
            f"ok    listener: 127.0.0.1:{port}: sites' transfers sent with bbr"]
        with socket.create_connection(("127.0.0.1", port)), server.accept()[0]:
            assert _check(port, listen=["127.0.0.1"]) == [
                f"ok    listener: 127.0.0.1:{port}: sites' transfers sent with bbr; "
                "connections now: 1 bbr"]
        assert _check(port, listen=["127.0.0.1"], congestion_control="") == [
            f"ok    listener: 127.0.0.1:{port}: sites' transfers sent with the system's "
            'default, bbr (server.congestion_control is "")']


def test_check_warns_of_connections_on_another_algorithm_than_the_listener() -> None:
    """What a route's `congctl lock` does to the connections it covers (here: set on the
    accepted socket itself)."""
    with _listening("bbr") as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)), server.accept()[0] as accepted:
            accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"reno")
            assert _check(port, listen=["127.0.0.1"]) == [
                f"warn  listener: 127.0.0.1:{port}: sites' transfers sent with bbr; "
                "connections now: 1 reno (a route's congctl lock decides for the others); "
                "fix: ip route show | grep congctl"]


def test_check_warns_when_the_listener_is_not_on_the_setting() -> None:
    with _listening("reno") as server:
        port = server.getsockname()[1]
        (line,) = _check(port, listen=["127.0.0.1"])
        assert line == (f"warn  listener: 127.0.0.1:{port}: sites' transfers sent with reno, not "
                        "bbr as server.congestion_control says; fix: systemctl reload "
                        "library-syncer-sshd.service")


def test_check_names_an_algorithm_the_kernel_does_not_offer() -> None:
    offered = check.AVAILABLE_CONGESTION.read_text().split()
    with _listening("reno") as server:
        port = server.getsockname()[1]
        (line,) = _check(port, listen=["127.0.0.1"], congestion_control="nosuchcc")
    assert line.endswith(f"fix: this kernel offers {' '.join(offered)}: load tcp_nosuchcc "
                         "(modprobe) and run systemctl reload library-syncer-sshd.service, or "
                         'set server.congestion_control to one of those or ""'), line


def test_check_warns_when_the_port_is_open_elsewhere_and_skips_when_closed() -> None:
    with _listening("bbr") as server:
        port = server.getsockname()[1]
        (line,) = _check(port, listen=["127.0.0.2"])
        assert line == (f"warn  listener: port {port} is open on 127.0.0.1, not on 127.0.0.2 "
                        "as server.listen says; fix: systemctl reload "
                        "library-syncer-sshd.service")
        (line,) = _check(port)  # [] = every address: 127.0.0.1 is not that
        assert "not on every address as server.listen says" in line
    assert _check(port) == [f"skip  listener: nothing listens on port {port}"]
