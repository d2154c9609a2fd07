"""The example projects (``examples/<name>/``) import as a user's own modules do: their
folders go on ``sys.path``, appended, so none of them can shadow the framework."""

from __future__ import annotations

import sys

from tests.examples.example_configs import EXAMPLES

for _folder in sorted(EXAMPLES.iterdir()):
    if (_folder / "conf").is_dir() and str(_folder) not in sys.path:
        sys.path.append(str(_folder))
