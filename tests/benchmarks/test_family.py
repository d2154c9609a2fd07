"""The problem family: problems drawn from their set and index alone, shaped as documented,
simulated with their own load costs, and the family benchmark end to end at a tiny size."""

from __future__ import annotations

import itertools
import json
import math
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the root off the path
    sys.path.insert(0, str(ROOT))

from benchmarks import family  # noqa: E402
from benchmarks.family import FULL_COST, SHAPES, FamilyError, generate  # noqa: E402

N = 20  # problems checked: every shape four times


def _config(problem, value):
    return {s.name: {f"x{i}": value() for i in range(s.dim)} for s in problem.stages}


@pytest.fixture(scope="module")
def problems():
    return [generate("dev", i) for i in range(N)]


def test_problems_are_drawn_from_set_and_index_alone(problems):
    again = generate("dev", 7)
    assert again.describe() == problems[7].describe()
    params = _config(again, lambda: 0.3)
    assert again.evaluate(params) == problems[7].evaluate(params)
    # The report set is another draw: no problem of it is a dev problem.
    report = [generate("report", i).describe() for i in range(5)]
    dev = [{k: v for k, v in p.describe().items() if k != "name"} for p in problems]
    assert all({k: v for k, v in r.items() if k != "name"} not in dev for r in report)


def test_shapes_sizes_and_costs_are_as_documented(problems):
    assert [p.shape for p in problems] == [SHAPES[i % 5] for i in range(N)]
    for p in problems:
        shares = [s.base_cost / FULL_COST for s in p.stages]
        assert 2 <= len(p.stages) <= 6 and all(1 <= s.dim <= 4 for s in p.stages)
        assert math.isclose(sum(shares), 1.0)
        assert math.isclose(sum(s.weight for s in p.stages), 1.0)
        if p.shape == "dear_first":
            assert 0.6 <= shares[0] <= 0.85
        if p.shape == "dear_last":
            assert 0.6 <= shares[-1] <= 0.85
        if p.shape == "decaying":
            assert all(a > b for a, b in itertools.pairwise(shares))
        # Only param_dependent stages grow along a parameter.
        assert all((s.growth is not None) == (p.shape == "param_dependent") for s in p.stages)
        for s in p.stages:
            assert 0.002 * s.base_cost <= s.load_cost <= 0.05 * s.base_cost
    # Different shares of the objective: some problem has a stage carrying over half of it.
    assert any(max(s.weight for s in p.stages) > 0.5 for p in problems)
    # Noise on about a quarter of the problems, at 1-5% of the range.
    noisy = [p for p in problems if p.noise_sd]
    assert 1 <= len(noisy) <= N // 2
    assert all(0.01 <= p.noise_sd / p.range <= 0.05 for p in noisy)


def test_objective_is_about_zero_at_best_and_minus_range_at_random(problems):
    import random

    for p in problems[:5]:
        rng = random.Random(0)
        values = []
        for _ in range(300):
            values.append(p.true_objective(_config(p, rng.random)))
        assert max(values) <= 0.05
        # The range is the median's distance to 0, measured on another sample.
        assert statistics.median(values) == pytest.approx(-p.range, rel=0.25)
        # A parameter-dependent cost really depends on its parameter.
        if p.shape == "param_dependent":
            s = p.stages[0]
            i = s.growth[0]
            low = {f"x{j}": 0.5 for j in range(s.dim)} | {f"x{i}": 0.0}
            high = low | {f"x{i}": 1.0}
            ratio = p.stage_cost(0, high) / p.stage_cost(0, low)
            assert ratio > 2.0


TINY = {
    "num_restarts": 2,
    "raw_samples": 16,
    "maxiter": 20,
    "prefix_restarts": 1,
    "prefix_raw_samples": 8,
    "mc_samples": 16,
}


def test_simulate_charges_each_stage_its_own_load_cost():
    from eeipu import Optimizer, SearchSpace
    from eeipu.testing import simulate

    p = generate("dev", 0)  # dear first stage: EEIPU reuses it
    space = SearchSpace.from_dict(p.space_dict())
    opt = Optimizer(space, budget=1e9, n_init=3, seed=0, method_options=TINY)
    trials = simulate(opt, p, load_cost=p.load_costs, max_trials=8)
    hits = [t for t in trials if t.cached]
    assert hits
    for t in hits:
        assert {s: t.costs[s] for s in t.cached} == {s: p.load_costs[s] for s in t.cached}
        fresh = [s for s in p.names if s not in t.cached]
        assert all(t.costs[s] == p.stage_cost(p.names.index(s), t.params[s]) for s in fresh)
    with pytest.raises(ValueError, match="`load_cost` must name every stage"):
        simulate(opt, p, load_cost={"stage0": 0.1}, max_trials=9)


def test_bad_settings_name_the_option(tmp_path, capsys):
    assert family.main(["--methods", "eeipu", "--results-dir", str(tmp_path)]) == 2
    assert "`--methods` must include the baseline 'ei'" in capsys.readouterr().err
    assert family.main(["--methods", "ei", "nope", "--results-dir", str(tmp_path)]) == 2
    assert "`--methods` must be distinct names of eeipu.METHODS" in capsys.readouterr().err
    assert family.main(["--seeds", "0", "--results-dir", str(tmp_path)]) == 2
    assert "`--seeds` must be an integer >= 1" in capsys.readouterr().err
    assert family.main(["--variant", "ei=eeipu:{}", "--results-dir", str(tmp_path)]) == 2
    assert "must name a new label and a method" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        family.main(["--variant", "x=eeipu:{give_up: 1}"])
    assert "the options are not JSON" in capsys.readouterr().err
    with pytest.raises(FamilyError, match="problem set must be one of"):
        generate("test", 0)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_family_benchmark_end_to_end_reuses_its_runs(tmp_path, capsys):
    args = ["--problems", "2", "--seeds", "2", "--budget", "3", "--n-init", "3"]
    args += ["--methods", "eeipu", "ei", "optuna_tpe", "--workers", "1"]
    args += ["--results-dir", str(tmp_path)]
    args += ["--method-options", json.dumps(TINY)]
    assert family.main(args) == 0
    err = capsys.readouterr().err
    assert "12 runs to do, 0 reused" in err
    page = (tmp_path / "family_dev.md").read_text()
    assert (tmp_path / "family_dev.png").stat().st_size > 0
    assert "| eeipu |" in page and "| ei | +0.000 |" in page
    # Optuna's own start-up trials: compared on the final best only.
    assert "| optuna_tpe | n/a |" in page
    assert "## Shape `dear_first` (1 problems)" in page and "| dev-01 | dear_last |" in page
    assert "every method evaluated the same warm-up per seed" in page
    assert "Checks (issue 30's done-when, on this dev set):" in page
    assert "- [x] normalized final best >= optuna_tpe's: **met**" in page or (
        "- [ ] normalized final best >= optuna_tpe's: **MISSED**" in page
    )
    raw = sorted((tmp_path / "raw" / "family" / "dev").rglob("*.json"))
    assert len(raw) == 12
    tpe = json.loads((tmp_path / "raw/family/dev/dev-00/optuna_tpe-seed1.json").read_text())
    assert tpe["method_options_used"]["sampler"] == "TPESampler"
    # Every raw run says which commit and which optimizer code made it; so does the page.
    made = tpe["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    assert made["commit"] == head.stdout.strip() and len(made["code"]) == 16
    assert made["python"] == platform.python_version() and made["botorch"]
    assert f"- Code: made by commit `{made['commit'][:10]}" in page
    assert "(12 runs); one version of the code they ran (eeipu, docstrings" in page
    assert (
        sum(t["cost"] for t in tpe["trials"][:-1]) < 30.0 <= sum(t["cost"] for t in tpe["trials"])
    )
    # Again: every run reused; --report-only refuses settings it has no runs for.
    assert family.main([*args, "--report-only"]) == 0
    assert "runs to do" not in capsys.readouterr().err
    assert family.main([*args, "--report-only", "--seeds", "3"]) == 2
    assert "--report-only: no raw run of dev-00 eeipu seed 2" in capsys.readouterr().err
    # A raw run made by other optimizer code counts only with --reuse any, which says so.
    path = tmp_path / "raw/family/dev/dev-01/ei-seed1.json"
    ei = json.loads(path.read_text())
    ei["provenance"]["code"] = "0123456789abcdef"
    path.write_text(json.dumps(ei))
    assert family.main([*args, "--report-only"]) == 2
    assert "ei seed 1 with these settings under" in (err := capsys.readouterr().err)
    assert "made by today's optimizer code (--reuse any takes any)" in err
    assert family.main([*args, "--report-only", "--reuse", "any"]) == 0
    assert "reusing 1 raw runs made by other optimizer code" in capsys.readouterr().err
    page = (tmp_path / "family_dev.md").read_text()
    assert "2 different versions of the code they ran" in page and "--reuse any" in page
    assert "**Preliminary**: 2 seeds per problem" in page and "| verdict |" in page
    # A variant (a method with extra options) runs alone: EI's runs do not use its option.
    # (Without --reuse any, the tampered EI run is made again.)
    variant = ["--methods", "eeipu", "ei", "cap", "--variant", 'cap=eeipu:{"give_up": 1.0}']
    assert family.main([*args, *variant]) == 0
    assert "5 runs to do, 7 reused" in capsys.readouterr().err
    assert json.loads(path.read_text())["provenance"]["code"] != "0123456789abcdef"
    page = (tmp_path / "family_dev.md").read_text()
    assert '`cap` is eeipu with {"give_up": 1.0}' in page and "| cap |" in page
    cap = json.loads((tmp_path / "raw/family/dev/dev-01/cap-seed0.json").read_text())
    assert cap["method_options_used"]["give_up"] == 1.0
