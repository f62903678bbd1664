"""The HTML pages' markup: files of the package's ``templates/`` folder (package data).

A parts file holds one piece of markup per ``<!-- part: NAME -->`` line, with ``$name``
placeholders (string.Template, which does not escape: callers pass text through
``html.escape``, or markup built from filled parts). ``report_parts.html`` holds the pieces
every page uses; a page's own file adds or replaces pieces.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from string import Template

_PART = re.compile(r"^<!-- part: (\w+) -->\n", re.M)


def template_text(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


@cache
def parts(*names: str) -> dict[str, Template]:
    """The parts of the files ``names``, a later file's part replacing an earlier one's."""
    found: dict[str, Template] = {}
    for name in names:
        pieces = _PART.split(template_text(name))
        # pieces: [preamble comment, name, text, name, text, ...]
        found.update((part, Template(text.rstrip("\n")))
                     for part, text in zip(pieces[1::2], pieces[2::2]))
    return found
