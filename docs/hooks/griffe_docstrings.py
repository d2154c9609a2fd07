"""A griffe extension (mkdocs.yml, mkdocstrings' ``extensions``): our docstrings' dialect.

The code writes Google-style docstrings with an ``Example:`` section of doctests and reST
roles (:class:`flows.StudyConfig`, as Python's own docs do). griffe reads ``Examples:`` as
doctests and would render ``Example:`` as Markdown prose, so this reads the one as the other;
a role becomes inline code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`~?([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class DocstringDialect(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(r"`\1`", text)
