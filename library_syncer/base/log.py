"""Logging: journald with structured fields under systemd, readable lines on stderr elsewhere.

Without a running journald, systemd.journal's handler silently drops messages, so we only use it
when systemd started us (JOURNAL_STREAM or INVOCATION_ID set). Structured fields are passed as
`extra={"fields": {"BYTES_RECEIVED": 123, ...}}`; on stderr they are left out (the message carries
what a human needs).
"""

from __future__ import annotations

import logging
import os
import sys

SYSLOG_IDENTIFIER = "library-syncer"


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


class _FieldsJournalHandler(logging.Handler):
    """Send records to the journal with upper-case structured fields from `extra['fields']`."""

    def __init__(self) -> None:
        super().__init__()
        from systemd import journal  # imported lazily: only needed under systemd

        self._send = journal.send
        self._priority = {
            logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
            logging.ERROR: 3, logging.CRITICAL: 2,
        }

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                str(k).upper(): str(v) for k, v in getattr(record, "fields", {}).items()
            }
            self._send(
                self.format(record),
                PRIORITY=str(self._priority.get(record.levelno, 6)),
                SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
                LOGGER=record.name,
                **fields,
            )
        except Exception:  # logging must never take the sync down
            self.handleError(record)


def setup(debug: bool = False, quiet: bool = False) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    root.setLevel(level)
    handler: logging.Handler
    if under_systemd():
        try:
            handler = _FieldsJournalHandler()
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname).1s %(message)s" if debug
                                               else "%(message)s"))
    root.addHandler(handler)
