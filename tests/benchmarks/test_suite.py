"""The benchmark suite: metrics against hand-computed values, the synthetic variants, and the
smoke mode end to end (in process), so the suite cannot rot."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the root off the path
    sys.path.insert(0, str(ROOT))

from benchmarks import suite  # noqa: E402
from benchmarks._metrics import (  # noqa: E402
    best_curve,
    bootstrap_diff,
    bootstrap_gain,
    cost_to_target,
    quartiles,
    relative_gain,
    reuse_metrics,
    run_metrics,
)
from benchmarks._report import Report, build_report  # noqa: E402
from eeipu.testing import VARIANTS, SyntheticProblem, synthetic_variant  # noqa: E402


def _run(costs, objectives, n_init=2, direction="maximize", cached=None):
    cached = cached or [0] * len(costs)
    return {
        "n_init": n_init,
        "budget": 10.0,
        "direction": direction,
        "trials": [
            {"cost": c, "objective": y, "n_cached": k, "seconds": 1.0, "params": {}}
            for c, y, k in zip(costs, objectives, cached, strict=True)
        ],
    }


# ---------------------------------------------------------------------- metrics by hand
def test_run_metrics_by_hand():
    run = _run([3, 3, 1, 1, 1], [1.0, 2.0, None, 5.0, 4.0], cached=[0, 0, 1, 2, 0])
    m = run_metrics(run)
    assert m["candidates"] == 5 and m["candidates_post"] == 3
    assert m["warmup_best"] == 2.0 and m["final_best"] == 5.0
    assert m["improvement"] == 3.0
    assert m["spent"] == 9 and m["warmup_spent"] == 6 and m["hits_post"] == 2
    # Minimized: the warm-up best is 1, the final best 1, improvement 0.
    low = run_metrics(_run([3, 3, 1], [1.0, 2.0, 4.0], direction="minimize"))
    assert (low["warmup_best"], low["final_best"], low["improvement"]) == (1.0, 1.0, 0.0)


def test_best_curve_and_cost_to_target_by_hand():
    run = _run([3, 3, 1, 1, 1], [1.0, 2.0, None, 5.0, 4.0])
    curve = best_curve(run, [0, 2.9, 3, 6, 7, 8, 9, 10])
    assert math.isnan(curve[0]) and math.isnan(curve[1])
    assert curve[2:] == [1.0, 2.0, 2.0, 5.0, 5.0, 5.0]
    assert cost_to_target(run, 4.5) == 8  # 3 + 3 + 1 (failed) + 1
    assert cost_to_target(run, 2.0) == 6
    assert cost_to_target(run, 10.0) is None
    assert cost_to_target(_run([2, 2, 2], [5.0, 3.0, 1.0], direction="minimize"), 3.0) == 4


def test_relative_gain_by_hand():
    # The gain of the seed means: (mean 20 - mean 10) / 10.
    assert relative_gain([30.0, 10.0], [10.0, 10.0]) == pytest.approx(100.0)
    assert relative_gain([5.0, 5.0], [10.0, 10.0]) == pytest.approx(-50.0)
    assert math.isnan(relative_gain([1.0], [0.0]))  # a baseline that never improved
    with pytest.raises(ValueError, match="paired"):
        relative_gain([1.0], [1.0, 2.0])
    lo, hi = bootstrap_gain([20.0, 20.0, 20.0], [10.0, 10.0, 10.0])
    assert lo == pytest.approx(100.0) and hi == pytest.approx(100.0)
    lo, hi = bootstrap_diff([3.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    assert 0.0 <= lo <= 1.0 <= hi <= 2.0


def test_report_gains_and_targets_by_hand():
    """eeipu / ei / random on 2 seeds, n_init 1, unit costs unless given.

    candidates after warm-up: eeipu 2, 4 (mean 3); ei 1, 1 (1); random 1, 3 (2);
    mean of the others per seed 1, 2 (mean 1.5): gains +200%, +50%, +100%.
    improvement: eeipu 4, 6 (5); ei 2, 2 (2); random 1, 4 (2.5); others 1.5, 3 (2.25).
    """
    runs = {
        "eeipu": {
            0: _run([1, 1, 1], [0.0, 2.0, 4.0], n_init=1),
            1: _run([1, 1, 1, 1, 1], [0.0, 1.0, 6.0, 2.0, 3.0], n_init=1),
        },
        "ei": {
            0: _run([1, 5], [0.0, 2.0], n_init=1),
            1: _run([1, 5], [0.0, 2.0], n_init=1),
        },
        "random": {
            0: _run([1, 5], [0.0, 1.0], n_init=1),
            1: _run([1, 1, 1, 1], [0.0, 4.0, 1.0, 1.0], n_init=1),
        },
    }
    rep = Report(runs, [0, 1], "eeipu", target_fraction=0.5)
    assert rep.gain("candidates_post", "ei")[0] == pytest.approx(200.0)
    assert rep.gain("candidates_post", "random")[0] == pytest.approx(50.0)
    assert rep.gain("candidates_post", None)[0] == pytest.approx(100.0)
    assert rep.gain("improvement", "ei")[0] == pytest.approx(150.0)
    assert rep.gain("improvement", "random")[0] == pytest.approx(100.0)
    assert rep.gain("improvement", None)[0] == pytest.approx(100.0 * (5 - 2.25) / 2.25)
    # Targets: warm-up best 0 + 0.5 * (best found 4 | 6) = 2 | 3.
    assert rep.targets == [2.0, 3.0]
    assert rep.to_target["eeipu"] == [2, 3]
    assert rep.to_target["ei"] == [6, None]
    assert rep.to_target["random"] == [None, 2]
    checks = dict((name.split(" ")[1], ok) for name, ok, _ in rep.checks(["candidates_vs_mean"]))
    assert checks == {"evaluates": True}  # exactly +100%
    # The best baseline (by mean improvement) is random (2.5), its final mean (1 + 4) / 2 =
    # 2.5. The mean best of eeipu's seeds reaches it at cost 3 ((4 + 6) / 2), random's own
    # at 6 ((1 + 4) / 2): 0.5x. Improvement differences 3 and 2: ahead on every resample.
    (_, ok, detail), (_, ahead, said) = rep.checks(["cost_to_best_baseline", "ahead_of_best"])
    assert ok and detail == "3 vs 6: 0.50x"
    assert ahead and said.startswith("ahead: eeipu 5 vs random 2.5")
    table = rep.gain_table()
    assert "| ei | +200% |" in table and "| **mean of the others** | +100% |" in table


def _terms(delta, log_ei, lic, log_ei_fresh, lic_fresh, eta=0.5):
    return {
        "log_ei": log_ei,
        "cost_term": eta * lic,
        "log_inv_cost": lic,
        "eta": eta,
        "prefix_stages": delta,
        "log_ei_fresh": log_ei_fresh,
        "cost_term_fresh": eta * lic_fresh,
        "log_inv_cost_fresh": lic_fresh,
    }


def _with_terms(run, terms):
    """``run`` with ``acq_terms`` on its trials (None: that trial records none)."""
    for t, a in zip(run["trials"], terms, strict=True):
        if a is not None:
            t["acq_terms"] = a
    return run


def test_code_id_changes_with_the_code_not_with_its_docstrings_or_comments(tmp_path):
    from benchmarks._provenance import code_id

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    src = '"""Module."""\n\n\ndef f(x):\n    """Twice x."""\n    return 2 * x  # double\n'
    src += 'K = 1\n"""An attribute docstring."""\n'
    (pkg / "m.py").write_text(src)
    (pkg / "conf.yaml").write_text("a: 1\n")
    first = code_id(["pkg"], root=tmp_path)
    (pkg / "m.py").write_text(src.replace("Twice x.", "x doubled.").replace("# double", ""))
    assert code_id(["pkg"], root=tmp_path) == first
    (pkg / "m.py").write_text(src.replace('"""An attribute docstring."""\n', ""))
    assert code_id(["pkg"], root=tmp_path) == first
    (pkg / "m.py").write_text(src.replace("2 * x", "3 * x"))
    assert code_id(["pkg"], root=tmp_path) != first
    (pkg / "m.py").write_text(src)
    (pkg / "conf.yaml").write_text("a: 2\n")
    assert code_id(["pkg"], root=tmp_path) != first


def test_verdicts_come_from_the_interval_and_resamples_are_counted():
    from benchmarks._report import distinct_resamples, verdict

    assert verdict(1.38, 19.1) == "ahead" and verdict(-2.0, -0.1) == "behind"
    assert verdict(-0.1, 0.2) == verdict(0.0, 0.0) == "within noise"
    assert [distinct_resamples(n) for n in (1, 2, 3, 5, 10)] == [1, 3, 10, 126, 92378]


def test_reuse_metrics_by_hand():
    """After a warm-up of 1: a reuser giving up 1 nat for a 4x cheaper point, a fresh
    proposal, a reuser that was also the better point (-0.5 nats, 2x cheaper), and a trial
    without terms (a random fallback): 2 of 4 trials reuse a prefix."""
    ln2 = math.log(2.0)
    run = _with_terms(
        _run([1] * 5, [0.0, 1.0, 2.0, 3.0, 4.0], n_init=1),
        [
            None,
            _terms(2, -3.0, 0.0, -2.0, -2 * ln2),
            _terms(0, -2.0, -1.0, -2.0, -1.0),
            _terms(1, -1.0, ln2, -1.5, 0.0),
            None,
        ],
    )
    m = reuse_metrics(run)
    assert (m["trials"], m["recorded"], m["reuse"], m["share"]) == (4, 3, 2, 0.5)
    assert m["log_ei_given_up"] == pytest.approx([1.0, -0.5])
    assert m["cost_ratio"] == pytest.approx([4.0, 2.0])
    # Acquisition margins: -3 - (-2 - ln 2) = ln 2 - 1 (a runner-up), -1 + ln2/2 + 1.5.
    assert m["margin"] == pytest.approx([ln2 - 1.0, 0.5 + ln2 / 2])
    assert reuse_metrics(_run([1, 1], [0.0, 1.0], n_init=1)) is None  # an old raw run
    assert quartiles([4.0, 1.0, 3.0, 2.0, 5.0]) == (2.0, 3.0, 4.0)
    assert quartiles([1.0, 2.0]) == (1.25, 1.5, 1.75)
    assert all(math.isnan(v) for v in quartiles([]))


def _page(rep):
    return build_report(
        rep,
        title="t",
        description="",
        command="cmd",
        facts=[],
        notes=[],
        checks=[],
        done_when=False,
        plot_name="t.png",
    )


def test_report_shows_prefix_reuse_and_old_runs_say_not_recorded():
    old = {
        "eeipu": {s: _run([1, 1, 1], [0.0, 1.0, 2.0], n_init=1) for s in (0, 1)},
        "ei": {s: _run([1, 1], [0.0, 1.0], n_init=1) for s in (0, 1)},
    }
    page = _page(Report(old, [0, 1], "eeipu", target_fraction=0.5))
    assert "## eeipu's prefix reuse and what it gave up" in page
    assert "Not recorded: these raw runs of eeipu predate" in page
    # New runs: seed 0 reuses on 1 of 2 trials after warm-up, seed 1 on 2 of 2.
    new = {
        "eeipu": {
            0: _with_terms(
                _run([1, 1, 1], [0.0, 1.0, 2.0], n_init=1),
                [None, _terms(1, -2.0, 0.0, -1.0, -math.log(4.0)), _terms(0, -1, -1, -1, -1)],
            ),
            1: _with_terms(
                _run([1, 1, 1], [0.0, 1.0, 2.0], n_init=1),
                [None, _terms(2, -1.0, 0.0, -1.0, -math.log(2.0)), _terms(1, -4, 0, -1, -1)],
            ),
        },
        "ei": old["ei"],
    }
    rep = Report(new, [0, 1], "eeipu", target_fraction=0.5)
    table = rep.reuse_table()
    # Given up: 1, 0, 3 nats (median 1, quartiles 0.5 and 2); cost ratios 4, 2, e.
    assert (
        "| eeipu | 2/2 | 3/4 = 75% | 75 ± 35% | 1 [0.5, 2] | 1.33 | 2/3 | 2.72 [2.36, 3.36] |"
        in (table)
    )
    assert "| ei |" not in table and "Not recorded" not in table
    assert table in _page(rep)
    # Only some seeds re-run: the table says over how many, the others are left out.
    mixed = {"eeipu": {0: new["eeipu"][0], 1: old["eeipu"][1]}, "ei": old["ei"]}
    assert "| eeipu | 1/2 | 1/2 = 50% |" in Report(mixed, [0, 1], "eeipu", 0.5).reuse_table()


# ---------------------------------------------------------------------- variants
def test_synthetic_variants():
    assert synthetic_variant("synthetic3", seed=4) == SyntheticProblem(seed=4)
    totals = {}
    for name in VARIANTS:
        p = synthetic_variant(name, seed=1)
        totals[name] = sum(p.base_costs)
        value, costs = p.evaluate(
            {
                s: {k: (v["low"] + v["high"]) / 2 for k, v in sec.items()}
                for s, sec in p.space_dict().items()
            }
        )
        assert math.isfinite(value) and all(c > 0 for c in costs.values())
    assert synthetic_variant("synthetic10").dims == (2, 3, 2, 2, 3, 2, 2, 3, 2, 3)
    assert synthetic_variant("highdim").dims == (6, 8, 6)
    last = synthetic_variant("last_expensive").base_costs
    assert last[-1] == max(last) and synthetic_variant("synthetic3").base_costs[0] == 8.0
    # Every variant costs the same per full trial, so a budget means the same everywhere.
    assert all(t == pytest.approx(totals["synthetic3"]) for t in totals.values())
    with pytest.raises(ValueError, match="unknown synthetic variant"):
        synthetic_variant("nope")


def test_noisy_variant_observes_noise_and_keeps_the_truth():
    p = synthetic_variant("noisy", seed=2)
    clean = synthetic_variant("synthetic3", seed=2)
    space = p.space_dict()
    gaps = []
    for i in range(200):
        params = {
            s: {
                k: v["low"] + (v["high"] - v["low"]) * ((i * 0.618 + j * 0.29) % 1)
                for j, (k, v) in enumerate(sec.items())
            }
            for s, sec in space.items()
        }
        observed, costs = p.evaluate(params)
        assert p.true_objective(params) == pytest.approx(clean.evaluate(params)[0])
        assert costs == clean.evaluate(params)[1]
        assert p.evaluate(params)[0] == observed  # the same configuration, the same draw
        assert p.stage_outputs(params)["finetune"] == pytest.approx(observed)
        gaps.append(observed - p.true_objective(params))
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1))
    assert abs(mean) < 1.0 and 3.2 < sd < 4.8
    assert clean.noise(params) == 0.0


def test_cost_trap_makes_the_first_stage_dear_at_its_optimum():
    p = synthetic_variant("cost_trap", seed=0)
    plain = SyntheticProblem(dims=p.dims, base_costs=p.base_costs, seed=0)
    optimum = {"x0": -math.pi, "x1": 12.275}  # one of Branin's three minimizers
    far = {"x0": -5.0, "x1": 0.0}  # Branin 308 there, its worst corner
    ratio_at_optimum = p.stage_cost("stage0", optimum) / plain.stage_cost("stage0", optimum)
    assert ratio_at_optimum == pytest.approx(8.0, rel=1e-3)
    assert p.stage_cost("stage0", far) / plain.stage_cost("stage0", far) < 1.05
    later = {"x0": 0.1, "x1": 0.2}
    assert p.stage_cost("stage3", later) == plain.stage_cost("stage3", later)
    with pytest.raises(ValueError, match="cost_trap must be 3 finite numbers"):
        SyntheticProblem(cost_trap=(1.0,))
    with pytest.raises(ValueError, match="noise_sd must be a finite number >= 0"):
        SyntheticProblem(noise_sd=-1.0)


@pytest.mark.slow
def test_failures_variant_fails_a_share_of_each_stage_and_simulate_tells_what_ran():
    import torch

    from eeipu import Optimizer, SearchSpace, TrialState
    from eeipu.testing import simulate

    p = synthetic_variant("failures", seed=3)
    space = SearchSpace.from_dict(p.space_dict())
    u = torch.quasirandom.SobolEngine(space.dim, scramble=True, seed=11).draw(2048).double()
    configs = [space.decode(x) for x in u]
    first = [p.failed_stage(c) for c in configs]
    share = {s: first.count(s) / len(first) for s in ("prep", "train", "finetune", None)}
    assert share["prep"] == 0.0
    assert share["train"] == pytest.approx(0.25, abs=0.03)  # its quarter of the domain
    assert share["finetune"] == pytest.approx(0.75 * 0.25, abs=0.03)  # of what gets there
    # The region is a property of the seed: the same seed, the same failures.
    assert [synthetic_variant("failures", seed=3).failed_stage(c) for c in configs[:50]] == first[
        :50
    ]
    assert [synthetic_variant("failures", seed=4).failed_stage(c) for c in configs] != first

    opt = Optimizer(space, method="random", budget=120.0, n_init=4, seed=0)
    trials = simulate(opt, p, load_cost=0.01)
    failed = [t for t in trials if t.state is TrialState.FAILED]
    assert failed and len(failed) < len(trials)
    for t in trials:
        stage = p.failed_stage(t.params)
        _, full = p.evaluate(t.params)
        if stage is None:
            assert t.state is TrialState.COMPLETE and set(t.costs) == set(p.names)
            continue
        ran = p.names[: p.names.index(stage) + 1]
        assert t.objective is None and tuple(t.costs) == ran  # nothing after the failure
        assert t.costs[stage] == pytest.approx(p.fail_cost * full[stage])
    with pytest.raises(ValueError, match=r"fail_share must be 3 numbers in \[0, 1\)"):
        SyntheticProblem(fail_share=(0.0, 1.0, 0.0))
    with pytest.raises(ValueError, match=r"fail_cost must be in \(0, 1\]"):
        SyntheticProblem(fail_cost=0.0)


def test_flaky_variant_fails_a_fifth_of_configurations_anywhere():
    import torch

    from eeipu import SearchSpace

    p = synthetic_variant("flaky", seed=2)
    space = SearchSpace.from_dict(p.space_dict())
    u = torch.quasirandom.SobolEngine(space.dim, scramble=True, seed=5).draw(3000).double()
    first = [p.failed_stage(space.decode(x)) for x in u]
    assert sum(f is not None for f in first) / len(first) == pytest.approx(0.2, abs=0.025)
    # Every stage fails with the same probability, so later stages see slightly fewer runs.
    q = 1 - 0.8 ** (1 / 3)
    expected = [len(first) * q * (1 - q) ** k for k in range(3)]  # 215, 200, 185
    counts = [first.count(s) for s in p.names]
    assert all(abs(c - e) < 45 for c, e in zip(counts, expected, strict=True)), counts  # ~3 sd
    # Anywhere: as often in each half of the first parameter's range.
    low = [f for x, f in zip(u, first, strict=True) if x[0] < 0.5]
    high = [f for x, f in zip(u, first, strict=True) if x[0] >= 0.5]
    share = [sum(f is not None for f in h) / len(h) for h in (low, high)]
    assert abs(share[0] - share[1]) < 0.04
    with pytest.raises(ValueError, match=r"fail_random must be in \[0, 1\)"):
        SyntheticProblem(fail_random=1.0)


def test_noisy_runs_are_scored_by_the_truth_of_the_best_looking_trial():
    """The second trial *looks* best (observed 9) but is truly 1: the run's best is 1."""
    trials = [
        {"objective": 5.0, "true_objective": 4.0, "cost": 1.0},
        {"objective": 9.0, "true_objective": 1.0, "cost": 1.0},
        {"objective": 7.0, "true_objective": 7.0, "cost": 1.0},
    ]
    run = {"trials": trials, "n_init": 1, "budget": 3.0, "direction": "maximize"}
    m = run_metrics(run)
    assert (m["warmup_best"], m["final_best"], m["improvement"]) == (4.0, 1.0, -3.0)
    assert best_curve(run, [1.0, 2.0, 3.0]) == [4.0, 1.0, 1.0]
    assert cost_to_target(run, 3.5) == 1.0 and cost_to_target(run, 5.0) is None
    # With the optimizer's recommendation recorded, that is what counts.
    for t, rec in zip(trials, [4.0, 6.5, 7.0], strict=True):
        t["reported_true"] = rec
    assert best_curve(run, [1.0, 2.0, 3.0]) == [4.0, 6.5, 7.0]
    assert run_metrics(run)["improvement"] == 3.0


# ---------------------------------------------------------------------- the suite
def test_config_errors_name_the_key(capsys):
    assert suite.main(["problem=synthetic3", "seeds=0"]) == 2
    assert "`seeds` must be a positive integer, but got 0" in capsys.readouterr().err
    assert suite.main(["problem=nope"]) == 2
    assert "error:" in capsys.readouterr().err
    assert suite.main(["methods=[eeipu,nope]", "missing_methods=error"]) == 2
    assert "['nope'], unknown to eeipu.METHODS" in capsys.readouterr().err
    assert suite.main(["reuse=always"]) == 2
    assert (
        "`reuse` must be one of ['same_code', 'any'], but got 'always'" in capsys.readouterr().err
    )


@pytest.mark.slow
def test_smoke_synthetic_writes_tables_and_plot_and_reuses_runs(tmp_path, capsys):
    args = ["problem=synthetic3", f"results_dir={tmp_path}", "--smoke"]
    assert suite.main(args) == 0
    out = capsys.readouterr().out
    assert "3 runs to do, 0 cached" in out
    md = (tmp_path / "synthetic3.md").read_text()
    assert (tmp_path / "synthetic3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "python -m benchmarks.suite problem=synthetic3" in md and "smoke=true" in md
    assert "| **mean of the others** |" in md and "SMOKE" in md
    assert "every method evaluated the same 3 warm-up configurations" in md
    assert "Code: made by commit `" in md and "(3 runs); one version of the code they ran" in md
    assert "## eeipu's prefix reuse and what it gave up" in md and "| eeipu | 1/1 |" in md
    # Wall seconds beside the budget units, per method.
    assert "| budget spent | wall s/run |" in md
    eeipu_row = next(line for line in md.splitlines() if line.startswith("| eeipu | "))
    wall = json.loads((tmp_path / "raw" / "synthetic3" / "eeipu-seed0.json").read_text())
    shown = float(eeipu_row.split("|")[-2].split("±")[0])
    assert shown == pytest.approx(wall["wall_seconds"], rel=0.01, abs=0.01)
    for m in ("eeipu", "ei", "random"):
        run = json.loads((tmp_path / "raw" / "synthetic3" / f"{m}-seed0.json").read_text())
        assert run["method"] == m and run["trials"] and run["budget"] == 50.0
        assert run["provenance"]["commit"] and run["provenance"]["code"]
        # Only eeipu's proposals record the acquisition's terms (issue 12).
        recorded = [t for t in run["trials"][3:] if "acq_terms" in t]
        assert bool(recorded) == (m == "eeipu")
        assert (
            sum(t["cost"] for t in run["trials"][:-1])
            < 50.0
            <= sum(t["cost"] for t in run["trials"])
        )
    # One seed: the page says it is preliminary; verdicts come from the intervals.
    assert "**Preliminary**: 1 seed (fewer than 5)" in md and "only 1 distinct resamples" in md
    assert "| verdict |" in md
    # Adding a method runs only that method; the others come from the raw cache.
    assert suite.main([*args, "methods=[eeipu,ei,random,carbo]"]) == 0
    out = capsys.readouterr().out
    assert "1 runs to do, 3 cached" in out
    assert "| carbo |" in (tmp_path / "synthetic3.md").read_text()
    # A raw run made by other optimizer code is not reused unless reuse=any, which says so.
    path = tmp_path / "raw" / "synthetic3" / "ei-seed0.json"
    ei = json.loads(path.read_text())
    ei["provenance"]["code"] = "0123456789abcdef"
    suite.save_json(path, ei)
    assert suite.main([*args, "reuse=any"]) == 0
    out = capsys.readouterr().out
    assert "0 runs to do, 3 cached" in out and "reusing 1 raw runs made by other" in out
    assert "2 different versions of the code they ran" in (tmp_path / "synthetic3.md").read_text()
    assert suite.main([*args, "report_only=true"]) == 0  # today's code only: ei left out
    assert "ei: only 0/1 seeds ran" in (tmp_path / "synthetic3.md").read_text()
    assert suite.main(args) == 0
    assert "1 runs to do, 2 cached" in capsys.readouterr().out
    assert json.loads(path.read_text())["provenance"]["code"] != "0123456789abcdef"


@pytest.mark.slow
@pytest.mark.extended  # make test-extended: a variant of the synthetic smoke test
def test_smoke_real_pipeline_through_the_flows(tmp_path, capsys, prefect_harness):
    """ml_stacking at size=smoke through flows.tune.run: the shared warm-up is copied into
    every method's own cache and journal, so all methods start from the same trials. With
    ``charge_overhead`` (a problem key) every trial also costs its measured overhead."""
    args = [
        "problem=ml_stacking",
        "+problem.charge_overhead=true",
        f"results_dir={tmp_path / 'results'}",
        f"work_dir={tmp_path / 'work'}",
        "methods=[eeipu,random]",
        "n_init=2",
        "--smoke",
    ]
    assert suite.main(args) == 0
    assert "2 runs to do, 0 cached" in capsys.readouterr().out
    raw = tmp_path / "results" / "raw" / "ml_stacking"
    warm = json.loads((raw / "warmup-seed0.json").read_text())["records"]
    assert len(warm) == 2
    for m in ("eeipu", "random"):
        run = json.loads((raw / f"{m}-seed0.json").read_text())
        # The first n_init trials are the shared warm-up, measured once; costs include the
        # overhead each trial was charged (ask and orchestration seconds).
        assert all(r["overhead"] > 0 for r in warm)
        assert [t["cost"] for t in run["trials"][:2]] == [
            sum(r["costs"].values()) + r["overhead"] for r in warm
        ]
        assert (tmp_path / "work" / "ml_stacking" / "seed0" / m / "studies").is_dir()
        assert run["provenance"]["commit"] and run["provenance"]["cores"]
    assert (tmp_path / "results" / "ml_stacking.png").exists()
    page = (tmp_path / "results" / "ml_stacking.md").read_text()
    assert "| eeipu |" in page and "charge_overhead (each trial also costs" in page
