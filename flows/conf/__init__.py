"""The default Hydra configs, shipped inside the package (Hydra's search path entry
``pkg://flows.conf``): ``config.yaml`` and ``serve.yaml`` with the groups ``pipeline/``,
``optimizer/`` and ``storage/``. A project adds its own groups with ``--config-dir``.

Example:
    >>> from flows.conf import CONFIG_DIR
    >>> sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "__pycache__")
    ['optimizer', 'pipeline', 'storage']
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIG_DIR"]

#: The folder of the shipped configs (a real folder: the package is installed unzipped).
CONFIG_DIR = Path(__file__).resolve().parent
