"""Options an older server lacks: how its refusal is recognized (the texts below are what the
real refusals print; tests/test_compat_system.py meets them on a Debian 11 server) and how a
run drops the option once, with one warning, for the rest of the run."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.base.errors import ExitStatus, NetworkError
from library_syncer.sync import rsync

TAIL = ["rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]",
        "rsync error: error in rsync protocol data stream (code 12) at io.c(285) "
        "[Receiver=3.5.0]"]
# The Perl rrsync of rsync < 3.2.4 (the original's forced command on an older image).
OLD_RRSYNC = ["/usr/bin/rrsync: invalid rsync-command syntax or options", *TAIL]
# rsync 3.1.3 itself, behind a forced command that lets the option through.
OLD_RSYNC = ["rsync: on remote machine: --compress-choice=zstd: unknown option",
             "rsync error: syntax or usage error (code 1) at main.c(1574) [server=3.1.3]", *TAIL]
# rsync 3.2+ built without zstd.
NO_ZSTD = ["unknown compress name: zstd", *TAIL]
# rrsync's policy, not its age: never dropped.
DISABLED = ["/usr/bin/rrsync: option -L has been disabled on this server", *TAIL]


def _sync(tmp_path: Path, **sync):
    base = config_module.defaults(tmp_path / "library-syncer.toml")
    return replace(base.sync, peer="old.example.org", **sync)


@pytest.mark.parametrize(("tail", "option", "server"), [
    (OLD_RRSYNC, None, None),
    (OLD_RSYNC, "--compress-choice", "3.1.3"),
    (NO_ZSTD, "--compress-choice", None),
    (["Your --compress-choice value (zstd) was refused by the server.", *TAIL],
     "--compress-choice", None),
])
def test_an_unknown_option_is_classified_as_refused(tmp_path, tail, option, server):
    error = rsync.classify(12, tail, rsync.Stats(), _sync(tmp_path))
    assert isinstance(error, rsync.OptionRefused), error
    assert (error.option, error.server) == (option, server)
    assert error.exit_status == ExitStatus.NETWORK and not isinstance(error, rsync.TransientError)
    assert str(error) == f"syncer@old.example.org:2222: the server refused the transfer: {tail[0]}"


@pytest.mark.parametrize("tail", [DISABLED, TAIL, ["rsync: on remote machine: --bogus: unknown"]])
def test_other_failures_are_not_refused_options(tmp_path, tail):
    error = rsync.classify(12, tail, rsync.Stats(), _sync(tmp_path))
    assert not isinstance(error, rsync.OptionRefused), error


def _attempts(tmp_path, tails, **sync):
    """A PeerOptions run whose attempts fail with the classified `tails`, in turn, then succeed;
    returns (the argv of each attempt, the result or the error raised)."""
    cfg = _sync(tmp_path, **sync)
    peer = rsync.PeerOptions(cfg)
    seen: list[list[str]] = []
    pending = list(tails)

    def attempt(argv: list[str]) -> rsync.Stats:
        seen.append(argv)
        if pending:
            raise rsync.classify(12, pending.pop(0), rsync.Stats(), cfg)
        return rsync.Stats(files=1)

    argv = rsync.pull_argv(cfg, tmp_path / "staging", [])
    try:
        outcome: object = peer.run(argv, attempt)
    except NetworkError as error:
        outcome = error
    return peer, argv, seen, outcome


@pytest.mark.parametrize("tail", [OLD_RRSYNC, OLD_RSYNC, NO_ZSTD])
def test_a_refused_option_is_dropped_once_with_one_warning(tmp_path, caplog, tail):
    with caplog.at_level(logging.WARNING, logger="library-syncer"):
        peer, argv, seen, outcome = _attempts(tmp_path, [tail], compress=True)
    assert isinstance(outcome, rsync.Stats) and outcome.files == 1
    assert "--compress-choice=zstd" in seen[0] and len(seen) == 2
    assert seen[1] == [a for a in argv if a != "--compress-choice=zstd"]
    assert "--compress" in seen[1]  # compression stays on: the two rsyncs negotiate it
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "refuses --compress-choice" in warnings[0], warnings
    assert "syncer@old.example.org:2222" in warnings[0]
    # the rest of the run never sends it again, and warns no more
    assert peer.adapt(argv) == seen[1]
    caplog.clear()
    assert peer.run(argv, lambda a: rsync.Stats(files=len(a))).files == len(seen[1])
    assert not caplog.records


def test_the_warning_names_the_server_rsync_when_it_says(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="library-syncer"):
        _attempts(tmp_path, [OLD_RSYNC], compress=True)
    assert "(syncer@old.example.org:2222, rsync 3.1.3)" in caplog.records[0].getMessage()


@pytest.mark.parametrize(("tails", "sync"), [
    ([OLD_RRSYNC, OLD_RRSYNC], {"compress": True}),  # still refused without it: not the option
    ([OLD_RRSYNC], {"compress": False}),  # nothing droppable was sent
    ([DISABLED], {"compress": True}),  # a disabled option is the server's policy
])
def test_a_refusal_without_a_droppable_option_stays_fatal(tmp_path, tails, sync):
    peer, _, seen, outcome = _attempts(tmp_path, tails, **sync)
    assert isinstance(outcome, NetworkError), outcome
    assert outcome.exit_status == ExitStatus.NETWORK
    assert str(outcome).startswith("syncer@old.example.org:2222: the server refused the transfer")
    assert len(seen) == len(tails)
    assert peer.dropped == (["--compress-choice"] if len(tails) == 2 else [])
