"""Code-aware cache keys: a stage's key covers its code, its fixed values and the fixed
arguments its pipeline was built with (no Prefect needed)."""

from __future__ import annotations

import importlib
import itertools
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from stages import Pipeline, PipelineError, Stage, code_fingerprint, stage

FLOAT = {"type": "float", "low": 0.0, "high": 1.0}

PIPELINE = '''
from stages import Pipeline, stage
from {pkg} import helpers


@stage(space={{"k": {{"type": "int", "low": 1, "high": 9}}}})
def prep(k):
    """Load the data."""
    return list(range(k))


@stage(inputs=["prep"], space={{"lr": {{"type": "float", "low": 0.0, "high": 1.0}}}})
def train(prep, lr):
    return helpers.scale(sum(prep), lr)


@stage(inputs=["train"], space={{"t": {{"type": "float", "low": 0.0, "high": 1.0}}}})
def evaluate(train, t):
    return train + t


def make():
    return Pipeline([prep, train, evaluate])
'''
HELPERS = """
def scale(total, lr):
    return total * lr
"""
PARAMS = {"prep": {"k": 4}, "train": {"lr": 0.5}, "evaluate": {"t": 0.25}}


_IMPORTS = itertools.count()


class _Package:
    """A package of the user's own on disk (``pipe.py``, ``helpers.py``), edited in place
    and imported afresh under a new name each time, as a new process would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        sys.path.insert(0, str(root))
        self.write(PIPELINE, HELPERS)

    def write(self, pipeline: str, helpers: str) -> None:
        self.files = {"pipe.py": pipeline, "helpers.py": helpers}

    def keys(self) -> dict[str, str]:
        pkg = f"userpkg{next(_IMPORTS)}"
        folder = self.root / pkg
        folder.mkdir()
        (folder / "__init__.py").write_text("")
        for name, text in self.files.items():
            (folder / name).write_text(text.format(pkg=pkg) if name == "pipe.py" else text)
        importlib.invalidate_caches()
        module = importlib.import_module(f"{pkg}.pipe")
        return module.make().keys(PARAMS)


@pytest.fixture
def package(tmp_path):
    pkg = _Package(tmp_path)
    yield pkg
    sys.path.remove(str(tmp_path))


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {s for s in before if before[s] != after[s]}


def test_comments_docstrings_and_formatting_keep_keys(package):
    before = package.keys()
    edited = PIPELINE.replace('"""Load the data."""', '"""Load the data (documented better)."""')
    edited = edited.replace(
        "    return list(range(k))", "    # a comment\n    return list(  range(k) )"
    )
    package.write(edited, HELPERS)
    assert package.keys() == before


def test_an_edited_stage_changes_its_key_and_its_descendants_only(package):
    before = package.keys()
    package.write(PIPELINE.replace("return helpers.scale(sum(prep), lr)", "return 2 * lr"), HELPERS)
    assert _changed(before, package.keys()) == {"train", "evaluate"}
    package.write(PIPELINE.replace("return train + t", "return train - t"), HELPERS)
    assert _changed(before, package.keys()) == {"evaluate"}


def test_an_edited_helper_of_the_same_package_changes_the_stages_that_call_it(package):
    before = package.keys()
    package.write(PIPELINE, HELPERS.replace("total * lr", "total * lr * 2"))
    assert _changed(before, package.keys()) == {"train", "evaluate"}


def test_the_search_space_in_the_decorator_is_not_code(package):
    before = package.keys()
    package.write(PIPELINE.replace('"high": 9', '"high": 12'), HELPERS)
    assert package.keys() == before  # k=4 is still k=4


def _factory(n: int, data: np.ndarray):
    @stage(space={"x": FLOAT})
    def score(x):
        return x * n + float(data.sum())

    return Pipeline([score])


def test_closed_over_values_and_arrays_are_part_of_the_key():
    p = {"score": {"x": 0.5}}
    base = _factory(1, np.zeros(3)).keys(p)
    assert _factory(1, np.zeros(3)).keys(p) == base
    assert _factory(2, np.zeros(3)).keys(p) != base
    assert _factory(1, np.ones(3)).keys(p) != base


def _closing_over(model):
    def predict(x):
        return model(x)

    return predict


def test_models_closed_over_count_by_their_weights_and_fitted_state():
    import torch
    from sklearn.linear_model import LinearRegression

    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    before = code_fingerprint(_closing_over(net))
    with torch.no_grad():
        net.weight += 1.0
    assert code_fingerprint(_closing_over(net)) != before
    X = np.arange(6.0).reshape(3, 2)
    fitted = [LinearRegression().fit(X, X @ w) for w in (np.ones(2), -np.ones(2))]
    prints = {code_fingerprint(_closing_over(m)) for m in (LinearRegression(), *fitted)}
    assert len(prints) == 3


def test_two_pipelines_sharing_a_stage_name_and_parameters_never_share_a_key():
    # The same name, space and parameters, other code: other keys.
    a = Pipeline([Stage(lambda x: x, "score", space={"x": FLOAT})])
    b = Pipeline([Stage(lambda x: -x, "score", space={"x": FLOAT})])
    p = {"score": {"x": 0.5}}
    assert a.key("score", p) != b.key("score", p)
    # The same code, other fixed arguments of the factory (Stage.bound): other keys.
    s = a["score"]
    bound1 = Pipeline([Stage(s.func, "score", space={"x": FLOAT}, bound={"size": "small"})])
    bound2 = Pipeline([Stage(s.func, "score", space={"x": FLOAT}, bound={"size": "full"})])
    assert len({a.key("score", p), bound1.key("score", p), bound2.key("score", p)}) == 3


def _scaled(x, scale=1.0):
    return x * scale


def test_fixed_parameters_are_passed_and_keyed():
    p = {"score": {"x": 0.5}}
    one = Stage(_scaled, "score", space={"x": FLOAT}, fixed={"scale": 1.0})
    two = Stage(_scaled, "score", space={"x": FLOAT}, fixed={"scale": 2.0})
    assert one.normalize(p["score"]) == {"scale": 1.0, "x": 0.5}
    assert Pipeline([one]).key("score", p) != Pipeline([two]).key("score", p)
    # A tuned value and the same value fixed make the same output, under the same key.
    tuned = Stage(_scaled, "score", space={"x": FLOAT, "scale": FLOAT})
    fixed = Stage(_scaled, "score", space={"scale": FLOAT}, fixed={"x": 0.5})
    both = {"score": {"x": 0.5, "scale": 1.0}}
    assert Pipeline([tuned]).key("score", both) == Pipeline([fixed]).key(
        "score", {"score": {"scale": 1.0}}
    )
    with pytest.raises(PipelineError, match="fixed parameter cannot also be a hyperparameter"):
        Stage(_scaled, "score", space={"x": FLOAT}, fixed={"x": 0.5})
    with pytest.raises(PipelineError, match="fixes parameter 'nope'"):
        Stage(_scaled, "score", space={"x": FLOAT}, fixed={"nope": 1})
    with pytest.raises(PipelineError, match="must be JSON-like"):
        Stage(_scaled, "score", space={"x": FLOAT}, fixed={"scale": object()})


def test_an_explicit_version_stands_for_the_code_and_can_pin_old_entries():
    p = {"score": {"x": 0.5}}
    old = Stage(lambda x: x, "score", space={"x": FLOAT})
    refactored = Stage(lambda x: x + 0.0, "score", space={"x": FLOAT})
    assert Pipeline([old]).key("score", p) != Pipeline([refactored]).key("score", p)
    # Pinning the version to the identity the entries were made under keeps them.
    pinned = Stage(refactored.func, "score", space={"x": FLOAT}, version=old.identity)
    assert Pipeline([pinned]).key("score", p) == Pipeline([old]).key("score", p)
    v1 = Stage(lambda x: x, "score", space={"x": FLOAT}, version="1")
    v1_other_code = Stage(lambda x: -x, "score", space={"x": FLOAT}, version="1")
    assert v1.identity == v1_other_code.identity == "1"


COUNTS: Counter[str] = Counter()
TABLE = {"a": 1.0}
SCALE = 2.0


def _counting(x):
    COUNTS["calls"] += 1
    return x * SCALE * TABLE["a"]


def test_module_state_does_not_move_keys_but_module_values_do(monkeypatch):
    before = code_fingerprint(_counting)
    _counting(0.5)
    assert code_fingerprint(_counting) == before  # a Counter is state, not code
    monkeypatch.setitem(TABLE, "a", 3.0)
    assert code_fingerprint(_counting) != before
    monkeypatch.undo()
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 3.0)
    assert code_fingerprint(_counting) != before


def test_keys_agree_across_processes():
    # Workers build the pipeline in their own process: the identities must match.
    code = (
        "from stages.testing import synthetic_pipeline; "
        "print(*(s.identity for s in synthetic_pipeline(seed=3).stages))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=cwd
        ).stdout
        for cwd in (Path(__file__).parents[2], Path("/"))
    ]
    from stages.testing import synthetic_pipeline

    here = " ".join(s.identity for s in synthetic_pipeline(seed=3).stages)
    assert runs == [here + "\n"] * 2


def test_source_less_functions_fall_back_to_bytecode():
    namespace: dict = {}
    exec(textwrap.dedent("def f(x):\n    return x + 1\n"), namespace)  # no source file
    first = code_fingerprint(namespace["f"])
    exec(textwrap.dedent("def f(x):\n    return x + 2\n"), namespace)
    assert code_fingerprint(namespace["f"]) != first
