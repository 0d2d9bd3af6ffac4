"""Jinja2 rendering of the shipped templates (StrictUndefined: a missing value is a bug, not "")."""

from __future__ import annotations

from typing import Any

import jinja2

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("library_syncer", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
)


def render(template: str, **context: Any) -> str:
    """Render `templates/<template>` with `context`."""
    return _ENV.get_template(template).render(**context)
