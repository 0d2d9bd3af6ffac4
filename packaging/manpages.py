#!/usr/bin/env python3
"""Write the manual pages from the argparse definitions in library_syncer/cli/main.py.

One page per command: library-syncer(1), and library-syncer-<command>(1) for each subcommand
(with its verbs, e.g. `server authorize`, on the same page). Run by debian/rules:
    python3 packaging/manpages.py debian/man
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library_syncer import __version__
from library_syncer.base import paths
from library_syncer.cli.main import PROG, build_parser


def _esc(text: str) -> str:
    """Roff-escape text: backslashes, leading dots/quotes, hyphens meant as minus signs."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help each subcommand was declared with."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            names = ", ".join(f"\\fB{_esc(o)}\\fR" for o in action.option_strings)
            if action.nargs != 0:
                metavar = action.metavar or action.dest.upper()
                names += f" \\fI{_esc(str(metavar))}\\fR"
        else:
            names = f"\\fI{_esc(str(action.metavar or action.dest))}\\fR"
        out += [".TP", names, _esc(action.help or "")]
    return out


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = " ".join(parser.format_usage().split())
    return usage.removeprefix("usage: ")


def _section(title: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f".SS {_esc(title)}", ".nf", _esc(_usage(parser)), ".fi"]
    if parser.description:
        lines += [".PP", _esc(parser.description)]
    lines += _options(parser)
    if parser.epilog:
        lines += [".PP", "Example:", ".PP", ".RS", ".nf",
                  _esc(parser.epilog.split("\n", 1)[-1].strip()), ".fi", ".RE"]
    return lines


def _page(name: str, summary: str, body: list[str], see_also: list[str], date: str) -> str:
    head = [f'.TH {_esc(name.upper())} 1 "{date}" "{PROG} {__version__}" "User Commands"',
            ".SH NAME", f"{_esc(name)} \\- {_esc(summary)}"]
    tail = [".SH SEE ALSO", ",\n".join(f"\\fB{_esc(s)}\\fR(1)" for s in see_also)]
    return "\n".join(head + body + tail) + "\n"


def pages(date: str) -> dict[str, str]:
    parser = build_parser()
    commands = _subparsers(parser)
    helps = _helps(parser)
    names = [f"{PROG}-{c}" for c in commands]
    result: dict[str, str] = {}
    body = [".SH SYNOPSIS", ".nf", _esc(_usage(parser)), ".fi",
            ".SH DESCRIPTION", _esc(parser.description or ""),
            ".SH OPTIONS", *_options(parser), ".SH COMMANDS"]
    for command in commands:
        body += [".TP", f"\\fB{_esc(command)}\\fR", _esc(helps.get(command, ""))]
    body += [".SH FILES", ".TP", f"\\fI{_esc(str(paths.DEFAULT_CONFIG_FILE))}\\fR",
             "The settings file: only the settings changed from their defaults.",
             ".TP", f"\\fI{_esc(str(paths.REFERENCE_SETTINGS_FILE))}\\fR",
             "Every setting with its default and meaning (config generate \\-\\-all).",
             ".TP", "\\fI/var/lib/library\\-syncer\\fR",
             "Synced snapshots and the published library.",
             ".SH EXIT STATUS", "0 success, 2 bad command line, 3 settings, 4 locked, "
             "5 network, 6 verification, 7 disk full, 8 host key, 9 check failed, "
             "10 partial transfer, 11 stale upstream, 12 settling (try later), 13 unsigned, "
             "14 scrub: rot found and repaired, 15 scrub: rot not repaired yet, "
             "1 internal error."]
    result[f"{PROG}.1"] = _page(PROG, parser.description or "", body, names, date)
    for command, sub in commands.items():
        verbs = _subparsers(sub)
        summary = helps.get(command, "").rstrip(".")
        body = [".SH DESCRIPTION"]
        if verbs:
            body += _options(sub) or []
            for verb, verb_parser in verbs.items():
                body += _section(f"{command} {verb}", verb_parser)
        else:
            body += _section(command, sub)
        result[f"{PROG}-{command}.1"] = _page(f"{PROG}-{command}", summary, body, [PROG], date)
    return result


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "man")
    out.mkdir(parents=True, exist_ok=True)
    # Reproducible builds: the date comes from the changelog when dpkg sets SOURCE_DATE_EPOCH.
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    when = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) if epoch else \
        datetime.datetime.now(datetime.timezone.utc)
    for name, text in pages(when.strftime("%Y-%m-%d")).items():
        (out / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
