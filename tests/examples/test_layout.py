"""The example projects are users of the framework: each ``examples/<name>/`` holds its
module and its ``conf/``, and imports only public names of ``stages``, ``eeipu`` and
``flows`` (import-linter sees only the packages, so this reads their imports)."""

from __future__ import annotations

import ast
import importlib

import pytest
import yaml

from tests.examples.example_configs import EXAMPLES

PIPELINES = ["ml_stacking", "vision_cnn", "t5_distill", "pretrain_probe"]
FRAMEWORK = ("stages", "eeipu", "flows")


def _imported(path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return names


@pytest.mark.parametrize("folder", sorted(p for p in EXAMPLES.iterdir() if p.is_dir()))
def test_examples_import_only_public_framework_names(folder):
    for path in folder.rglob("*.py"):
        for name in _imported(path):
            parts = name.split(".")
            if parts[0] in FRAMEWORK:
                assert not any(p.startswith("_") for p in parts), f"{path}: imports {name}"


@pytest.mark.parametrize("name", PIPELINES)
def test_each_example_holds_its_pipeline_and_config(name):
    config = yaml.safe_load((EXAMPLES / name / "conf" / "pipeline" / f"{name}.yaml").read_text())
    module, _, factory = config["target"].rpartition(".")
    assert module == name and (EXAMPLES / name / f"{name}.py").is_file()
    # conftest.py puts the example folders on sys.path, as `eeipu tune` does the cwd.
    imported = importlib.import_module(module)
    assert imported.__file__ == str(EXAMPLES / name / f"{name}.py")
    assert callable(getattr(imported, factory))
