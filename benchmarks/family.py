"""A family of generated multi-stage problems, and the benchmark that judges methods on it.

    .venv/bin/python -m benchmarks.family --set dev                  # 40 problems x 3 seeds
    .venv/bin/python -m benchmarks.family --set dev --methods eeipu ei ms_bo
    .venv/bin/python -m benchmarks.family --set report               # only to report
    .venv/bin/python -m benchmarks.family --smoke                    # seconds, temp dir

A handful of named problems is easy to tune a method to; a family is not. Each problem is
drawn from its set's name and its index alone (:func:`generate`), so ``dev-07`` is the same
problem on every machine:

* 2-6 stages of 1-4 parameters each (the unit cube; every stage's search space is
  ``x0..x{d-1}`` in [0, 1]);
* each stage's objective term is a test function from a library (Branin, Six-Hump Camel,
  Hartmann, Ackley, Levy, Styblinski-Tang, Rosenbrock, Dixon-Price, Griewank), seen through
  random axis flips, a random axis order and a random shift (the stage sees a sub-box of
  75% of each axis of the function's domain), scaled so that its best value over 1024 Sobol
  points is 0 and its median is 1 (log-compressed: ``log2(1 + (f - min) / (median - min))``),
  and weighted by a Dirichlet(1) draw, so stages carry different shares of the objective;
  the objective (maximized) is minus the weighted sum, about 0 at the optimum and -1 for a
  typical random configuration;
* the cost of a stage is its base cost times a smooth wiggle of its parameters (x 0.6-1.6);
  the base costs follow the problem's *shape*, one of five in turn: ``dear_first`` (the
  first stage 60-85% of a full trial), ``dear_last`` (the last stage 60-85%), ``flat``,
  ``param_dependent`` (each stage's cost also grows 3-20x along one of its parameters, as
  epochs or width do) and ``decaying`` (each stage 1.5-3x cheaper than the one before);
  a full trial costs 10 units at the base costs;
* a quarter of the problems observe the objective with Gaussian noise (sd 0.01-0.05 of the
  range; methods are then scored on the true value of what they would report);
* a cache hit costs 0.2-5% of the stage's base cost (one fraction per problem).

Each method runs each problem with ``--seeds`` seeds (the optimizer's seed: every method
evaluates the same Sobol warm-up per seed) through :func:`benchmarks.suite.run_simulated`
(the optimizer's own ask/tell loop, :func:`eeipu.testing.simulate`'s exact cache). The
page ``<results_dir>/family_<set>.md`` reports per method the distribution over problems of
its improvement after the warm-up minus plain EI's (normalized by the problem's range,
paired by seed): mean with a 90% bootstrap interval over problems, 10th percentile, share of
problems won or lost beyond noise, per shape too, and the normalized final best.

Two sets of problems: ``dev`` (to develop and choose designs on) and ``report`` (run only to
report a design already chosen; never to choose one). Raw runs are kept under
``<results_dir>/raw/family/<set>/`` and reused when their settings match.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._provenance import REUSE, describe, made_by, provenance, reusable, reuse_note
from benchmarks._report import verdict

ROOT = Path(__file__).resolve().parents[1]
SETS = ("dev", "report")
SHAPES = ("dear_first", "dear_last", "flat", "param_dependent", "decaying")
FULL_COST = 10.0  # a full trial's cost at the base costs
BASELINE = "ei"
DEFAULT_METHODS = ("eeipu", "ei")
# What users would pick instead: Optuna's samplers, each with its own n_init random start-up
# trials (so no shared warm-up: compared on the final best only).
OPTUNA = {"optuna_gp": "GPSampler", "optuna_tpe": "TPESampler"}

__all__ = [
    "SETS",
    "SHAPES",
    "FamilyError",
    "FamilyProblem",
    "generate",
    "main",
    "run_family",
]


class FamilyError(ValueError):
    """A bad family-benchmark setting (the message names the option and the rule)."""


def _rng(*key: Any) -> random.Random:
    text = json.dumps(key, sort_keys=True)
    return random.Random(int(hashlib.sha256(text.encode()).hexdigest()[:16], 16))


# ---------------------------------------------------------------------- test functions
def _library(dim: int) -> list[tuple[str, Any, tuple[float, float] | None]]:
    """(name, factory, domain override) of the test functions defined for ``dim``."""
    from botorch.test_functions.synthetic import (
        Ackley,
        Branin,
        DixonPrice,
        Griewank,
        Hartmann,
        Levy,
        Rosenbrock,
        SixHumpCamel,
        StyblinskiTang,
    )

    out: list[tuple[str, Any, tuple[float, float] | None]] = [
        # Ackley's standard box (+-32.8) is mostly a flat plateau of ripples: its core only.
        ("ackley", lambda: Ackley(dim=dim), (-5.0, 5.0)),
        ("levy", lambda: Levy(dim=dim), None),
        ("styblinski_tang", lambda: StyblinskiTang(dim=dim), None),
        ("dixon_price", lambda: DixonPrice(dim=dim), None),
        # Griewank's standard box (+-600) is a bowl; +-10 shows its ripples too.
        ("griewank", lambda: Griewank(dim=dim), (-10.0, 10.0)),
    ]
    if dim >= 2:
        out.append(("rosenbrock", lambda: Rosenbrock(dim=dim), None))
    if dim == 2:
        out += [("branin", Branin, None), ("six_hump_camel", SixHumpCamel, None)]
    if dim in (3, 4, 6):
        out.append(("hartmann", lambda: Hartmann(dim=dim), None))
    return out


@dataclass(frozen=True)
class _Stage:
    name: str
    function: str
    dim: int
    weight: float
    flips: tuple[bool, ...]
    order: tuple[int, ...]
    shift: tuple[float, ...]
    base_cost: float
    wiggle: tuple[tuple[float, float], ...]  # (amplitude, phase) per parameter
    growth: tuple[int, float] | None  # (parameter, log of the cost's growth along it)
    load_cost: float


class FamilyProblem:
    """One generated problem (see the module docstring; build it with :func:`generate`).

    It offers what :func:`eeipu.testing.simulate` and
    :func:`benchmarks.suite.run_simulated` need: ``names``, ``space_dict``, ``evaluate``,
    ``stage_outputs``, ``failed_stage`` (never fails), ``true_objective``, ``noise_sd`` and
    ``optimum``, plus ``range`` (0 minus the median objective of 1024 Sobol
    configurations: the scale of normalized improvements) and ``load_costs``.
    """

    fail_cost = 1.0

    def __init__(
        self, name: str, shape: str, stages: Sequence[_Stage], noise_fraction: float
    ) -> None:
        import torch
        from botorch.test_functions.synthetic import SyntheticTestFunction

        self.name, self.shape, self.stages = name, shape, tuple(stages)
        self.names = [s.name for s in self.stages]
        self.noise_sd = 0.0
        self.load_costs = {s.name: s.load_cost for s in self.stages}
        self._fns: list[SyntheticTestFunction] = []
        self._box: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._norm: list[tuple[float, float]] = []
        for s in self.stages:
            factory, domain = next((f, d) for n, f, d in _library(s.dim) if n == s.function)
            fn = factory()
            lo, hi = fn.bounds[0].double(), fn.bounds[1].double()
            if domain is not None:
                lo, hi = torch.full_like(lo, domain[0]), torch.full_like(hi, domain[1])
            self._fns.append(fn)
            self._box.append((lo, hi))
            u = torch.quasirandom.SobolEngine(s.dim, scramble=True, seed=0).draw(
                1024, dtype=torch.double
            )
            f = self._raw(len(self._norm), u)
            self._norm.append((float(f.min()), float(f.median())))
        u = torch.quasirandom.SobolEngine(sum(s.dim for s in self.stages), scramble=True, seed=1)
        draws = u.draw(1024, dtype=torch.double)
        total = torch.zeros(1024, dtype=torch.double)
        col = 0
        for k, s in enumerate(self.stages):
            total -= s.weight * self._term(k, draws[:, col : col + s.dim])
            col += s.dim
        self.range = float(-total.median())
        self.noise_sd = float(noise_fraction) * self.range

    def __repr__(self) -> str:
        return f"FamilyProblem({self.name!r}, {self.shape}, {len(self.stages)} stages)"

    # ------------------------------------------------------------------ the objective
    def _raw(self, k: int, u: Any) -> Any:
        """Stage k's test function at unit-cube points ``u`` (n x d)."""
        import torch

        s, (lo, hi) = self.stages[k], self._box[k]
        z = u[:, list(s.order)]
        flips = [i for i, f in enumerate(s.flips) if f]
        if flips:
            z = z.clone()
            z[:, flips] = 1.0 - z[:, flips]
        z = torch.tensor(s.shift, dtype=torch.double) + 0.75 * z
        return self._fns[k].evaluate_true(lo + (hi - lo) * z)

    def _term(self, k: int, u: Any) -> Any:
        """Stage k's normalized term: 0 at its best Sobol point, 1 at the median one."""
        import torch

        fmin, fmed = self._norm[k]
        gap = torch.clamp(self._raw(k, u) - fmin, min=0.0) / max(fmed - fmin, 1e-12)
        return torch.log2(1.0 + gap)

    def _u(self, k: int, params: Mapping[str, Any]) -> Any:
        import torch

        return torch.tensor(
            [[float(params[f"x{i}"]) for i in range(self.stages[k].dim)]], dtype=torch.double
        )

    def stage_value(self, k: int, params: Mapping[str, Any]) -> float:
        """Stage k's (negated, weighted) contribution to the objective."""
        return -self.stages[k].weight * float(self._term(k, self._u(k, params))[0])

    def stage_cost(self, k: int, params: Mapping[str, Any]) -> float:
        """Stage k's simulated cost with these parameters."""
        s = self.stages[k]
        u = [float(params[f"x{i}"]) for i in range(s.dim)]
        log_factor = 0.5 * sum(
            a * math.cos(math.pi * (x + p)) for x, (a, p) in zip(u, s.wiggle, strict=True)
        )
        if s.growth is not None:
            i, span = s.growth
            log_factor += span * (u[i] - 0.5)
        return s.base_cost * math.exp(log_factor)

    def space_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The search space in eeipu's schema: every parameter a float in [0, 1]."""
        return {
            s.name: {f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(s.dim)}
            for s in self.stages
        }

    def optimum(self) -> float:
        """0.0: the objective at every stage's best Sobol point (the true optimum is at most
        a little above)."""
        return 0.0

    def true_objective(self, params: Mapping[str, Mapping[str, Any]]) -> float:
        return sum(self.stage_value(k, params[n]) for k, n in enumerate(self.names))

    def noise(self, params: Mapping[str, Mapping[str, Any]]) -> float:
        """The observation noise of a configuration (drawn from it: it reproduces)."""
        if not self.noise_sd:
            return 0.0
        return _rng(self.name, {n: dict(params[n]) for n in self.names}).gauss(0.0, self.noise_sd)

    def evaluate(self, params: Mapping[str, Mapping[str, Any]]) -> tuple[float, dict[str, float]]:
        costs = {n: self.stage_cost(k, params[n]) for k, n in enumerate(self.names)}
        return self.true_objective(params) + self.noise(params), costs

    def stage_outputs(self, params: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
        """The running objective sum after each stage (the last one observed, with noise)."""
        total, out = 0.0, {}
        for k, n in enumerate(self.names):
            total += self.stage_value(k, params[n])
            out[n] = total
        out[self.names[-1]] += self.noise(params)
        return out

    def failed_stage(self, params: Mapping[str, Mapping[str, Any]]) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        """The problem in one JSON-able dict (the page's problem table)."""
        total = sum(s.base_cost for s in self.stages)
        return {
            "name": self.name,
            "shape": self.shape,
            "stages": len(self.stages),
            "dims": [s.dim for s in self.stages],
            "functions": [s.function for s in self.stages],
            "weights": [round(s.weight, 3) for s in self.stages],
            "cost_shares": [round(s.base_cost / total, 3) for s in self.stages],
            "noise_sd": round(self.noise_sd / self.range, 4),
            "load_fraction": round(self.stages[0].load_cost / self.stages[0].base_cost, 4),
            "range": round(self.range, 4),
        }


def _shares(rng: random.Random, shape: str, n: int) -> list[float]:
    """Base-cost shares of the ``n`` stages for ``shape`` (they sum to 1)."""
    if shape in ("dear_first", "dear_last"):
        dear = rng.uniform(0.6, 0.85)
        rest = [rng.gammavariate(1.0, 1.0) for _ in range(n - 1)]
        rest = [(1.0 - dear) * r / sum(rest) for r in rest]
        return [dear, *rest] if shape == "dear_first" else [*rest, dear]
    if shape == "flat":
        raw = [rng.uniform(0.8, 1.25) for _ in range(n)]
    elif shape == "decaying":
        ratio = rng.uniform(1.5, 3.0)
        raw = [ratio**-k for k in range(n)]
    else:  # param_dependent
        raw = [rng.gammavariate(2.0, 1.0) for _ in range(n)]
    return [r / sum(raw) for r in raw]


def generate(set_name: str, index: int) -> FamilyProblem:
    """Problem ``index`` of the set ``set_name`` ('dev' or 'report'), drawn from those two
    alone; its shape is ``SHAPES[index % 5]``.

    Example:
        >>> p = generate("dev", 0)
        >>> p.name, p.shape
        ('dev-00', 'dear_first')
    """
    if set_name not in SETS:
        raise FamilyError(f"the problem set must be one of {list(SETS)}, but got {set_name!r}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise FamilyError(f"a problem index must be an integer >= 0, but got {index!r}")
    rng = _rng("eeipu-family", set_name, index)
    shape = SHAPES[index % len(SHAPES)]
    n = rng.randint(2, 6)
    dims = [rng.choice((1, 2, 2, 3, 3, 4)) for _ in range(n)]
    weights = [rng.gammavariate(1.0, 1.0) for _ in range(n)]
    weights = [w / sum(weights) for w in weights]
    shares = _shares(rng, shape, n)
    load_fraction = math.exp(rng.uniform(math.log(0.002), math.log(0.05)))
    noise_fraction = rng.uniform(0.01, 0.05) if rng.random() < 0.25 else 0.0
    stages = []
    for k, d in enumerate(dims):
        function = rng.choice(_library(d))[0]
        order = list(range(d))
        rng.shuffle(order)
        growth = None
        if shape == "param_dependent":
            growth = (rng.randrange(d), math.log(rng.uniform(3.0, 20.0)))
        base = FULL_COST * shares[k]
        stages.append(
            _Stage(
                name=f"stage{k}",
                function=function,
                dim=d,
                weight=weights[k],
                flips=tuple(rng.random() < 0.5 for _ in range(d)),
                order=tuple(order),
                shift=tuple(rng.uniform(0.0, 0.25) for _ in range(d)),
                base_cost=base,
                wiggle=tuple((rng.gauss(0.0, 1.0) / math.sqrt(d), rng.random()) for _ in range(d)),
                growth=growth,
                load_cost=base * load_fraction,
            )
        )
    return FamilyProblem(f"{set_name}-{index:02d}", shape, stages, noise_fraction)


# ---------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Settings:
    """What a family benchmark runs (``--help`` of ``python -m benchmarks.family``)."""

    set_name: str = "dev"
    problems: int = 40
    seeds: int = 3
    methods: tuple[str, ...] = DEFAULT_METHODS
    budget: float = 20.0  # in full trials at the base costs (FULL_COST units each)
    n_init: int = 5
    method_options: Mapping[str, Any] | None = None
    max_prefixes: int = 24
    workers: int = 2
    results_dir: Path = ROOT / "benchmarks" / "results"
    report_only: bool = False
    # same_code: reuse a raw run only if today's optimizer code made it; any: whatever made it.
    reuse: str = "same_code"
    # label -> (method, options on top of method_options): a design under development,
    # named in ``methods`` by its label (``--variant eeipu_cap1=eeipu:{"give_up": 1}``).
    variants: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None

    def method_of(self, label: str) -> tuple[str, dict[str, Any]]:
        """The method a label runs and all the options it gets."""
        method, extra = (self.variants or {}).get(label, (label, {}))
        return method, {**(self.method_options or {}), **extra}

    def check(self) -> None:
        if self.reuse not in REUSE:
            raise FamilyError(f"`--reuse` must be one of {list(REUSE)}, but got {self.reuse!r}")
        if self.set_name not in SETS:
            raise FamilyError(f"`--set` must be one of {list(SETS)}, but got {self.set_name!r}")
        for key in ("problems", "seeds", "n_init", "workers"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise FamilyError(f"`--{key.replace('_', '-')}` must be an integer >= 1, got {v!r}")
        if not (self.budget > 0 and math.isfinite(self.budget)):
            raise FamilyError(f"`--budget` must be a positive number, but got {self.budget!r}")
        from eeipu import METHODS

        for label, (method, _) in (self.variants or {}).items():
            if label in METHODS or label in OPTUNA or method not in METHODS:
                raise FamilyError(
                    f"`--variant {label}={method}:...` must name a new label and a method of "
                    f"eeipu.METHODS {sorted(METHODS)}"
                )
        known = set(METHODS) | set(OPTUNA) | set(self.variants or {})
        unknown = [m for m in self.methods if m not in known]
        if unknown or not self.methods or len(set(self.methods)) != len(self.methods):
            raise FamilyError(
                f"`--methods` must be distinct names of eeipu.METHODS {sorted(METHODS)} "
                f"or {sorted(OPTUNA)}, but got {list(self.methods)}"
            )
        if BASELINE not in self.methods:
            raise FamilyError(f"`--methods` must include the baseline {BASELINE!r}")


def _job(s: Settings, index: int, label: str, seed: int) -> dict[str, Any]:
    from eeipu import options_used_by

    method, options = s.method_of(label)
    fingerprint = {
        "family": "eeipu-family-1",
        "problem": f"{s.set_name}-{index:02d}",
        "budget_fulls": s.budget,
        "n_init": s.n_init,
        # A method's runs depend on the options it uses only (EI's serve every EEIPU variant).
        "method_options": {} if method in OPTUNA else options_used_by(method, options),
        "max_prefixes": None if method in OPTUNA else s.max_prefixes,
        "method": method,
        "seed": seed,
    }
    return {
        "set": s.set_name,
        "index": index,
        "problem": fingerprint["problem"],
        "method": method,
        "label": label,
        "seed": seed,
        "budget": s.budget * FULL_COST,
        "n_init": s.n_init,
        "method_options": options,
        "max_prefixes": s.max_prefixes,
        "max_trials": None,
        "fingerprint": fingerprint,
    }


def run_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """One (problem, method, seed); returns the raw run (:func:`benchmarks.suite.run_simulated`
    for eeipu's methods, :func:`run_optuna` for Optuna's samplers)."""
    from benchmarks.suite import run_simulated

    problem = generate(job["set"], job["index"])
    if job["method"] in OPTUNA:
        run = run_optuna(problem, job)
    else:
        run = run_simulated(problem, {**job, "load_cost": problem.load_costs})
    run["range"] = problem.range
    return run


def run_optuna(problem: FamilyProblem, job: Mapping[str, Any]) -> dict[str, Any]:
    """One seed of an Optuna sampler (``job['method']``, a key of ``OPTUNA``) on ``problem``,
    through Optuna's ask/tell interface with the same simulated cache and costs as
    :func:`eeipu.testing.simulate`: a trial started while budget is left, a stage that
    ran before with the same values upstream costs its load cost. Its first ``n_init``
    trials are the sampler's own random start-up trials. Returns the raw run (on a noisy
    problem each trial carries its true objective: what the best-looking trial is worth)."""
    import optuna

    from benchmarks.suite import raw_run
    from eeipu.testing import SimulatedCache

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_type = getattr(optuna.samplers, OPTUNA[job["method"]])
    sampler = sampler_type(seed=job["seed"], n_startup_trials=job["n_init"])
    study = optuna.create_study(direction="maximize", sampler=sampler)
    cache = SimulatedCache(problem.names)
    trials: list[dict[str, Any]] = []
    spent, start = 0.0, time.perf_counter()
    while spent < job["budget"]:
        asked = time.perf_counter()
        trial = study.ask()
        params = {
            s.name: {f"x{i}": trial.suggest_float(f"{s.name}.x{i}", 0.0, 1.0) for i in range(s.dim)}
            for s in problem.stages
        }
        seconds = time.perf_counter() - asked
        hits = cache.lookup(params)
        objective, costs = problem.evaluate(params)
        costs = {n: (problem.load_costs[n] if n in hits else c) for n, c in costs.items()}
        study.tell(trial, objective)
        cache.add(params, problem.names)
        spent += sum(costs.values())
        trials.append(
            {
                "number": len(trials),
                "origin": job["method"],
                "objective": objective,
                **({"true_objective": problem.true_objective(params)} if problem.noise_sd else {}),
                "cost": sum(costs.values()),
                "n_cached": len(hits),
                "seconds": round(seconds, 4),
                "params": params,
            }
        )
    used = {"sampler": OPTUNA[job["method"]], "optuna": optuna.__version__}
    return raw_run(job, problem, trials, used, time.perf_counter() - start)


def _raw_path(s: Settings, job: Mapping[str, Any]) -> Path:
    return (
        Path(s.results_dir)
        / "raw"
        / "family"
        / s.set_name
        / job["problem"]
        / f"{job['label']}-seed{job['seed']}.json"
    )


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _execute(jobs: list[dict[str, Any]], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        _init_worker()
        yield from map(run_job, jobs)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(run_job, jobs)


def run_family(s: Settings) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Every (problem, method, seed) of ``s``, reusing the raw runs whose settings match;
    returns the runs keyed by (problem, method, seed)."""
    from benchmarks.suite import load_raw, save_json

    s.check()
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    todo = []
    made = provenance()
    stale = 0
    for index in range(s.problems):
        for method in s.methods:
            for seed in range(s.seeds):
                job = _job(s, index, method, seed)
                run = load_raw(_raw_path(s, job), job["fingerprint"])
                if reusable(run, s.reuse, made["code"]):
                    runs[job["problem"], method, seed] = run
                    stale += not made_by(run, made["code"])
                elif s.report_only:
                    raise FamilyError(
                        f"--report-only: no raw run of {job['problem']} {method} seed {seed} "
                        f"with these settings under {s.results_dir}"
                        + (
                            " made by today's optimizer code (--reuse any takes any)"
                            if run is not None
                            else ""
                        )
                    )
                else:
                    todo.append(job)
    if stale:
        print(reuse_note(stale, "--reuse any"), file=sys.stderr)
    if todo:
        # Problem by problem, so a page written from a partial run compares like with like.
        todo.sort(key=lambda j: (j["index"], j["seed"]))
        for job in todo:
            job["provenance"] = made
        print(f"family {s.set_name}: {len(todo)} runs to do, {len(runs)} reused", file=sys.stderr)
        start, total = time.perf_counter(), len(todo)
        for done, run in enumerate(_execute(list(todo), s.workers), 1):
            job = next(j for j in todo if j["fingerprint"] == run["fingerprint"])
            todo.remove(job)
            save_json(_raw_path(s, job), run)
            runs[job["problem"], job["label"], job["seed"]] = run
            elapsed = time.perf_counter() - start
            print(
                f"[{done}/{total}] {job['problem']} {job['label']} seed {job['seed']}: "
                f"{len(run['trials'])} trials in {run['wall_seconds']:.0f} s "
                f"(elapsed {elapsed / 60:.1f} min, "
                f"~{elapsed / done * (total - done) / 60:.0f} min left)",
                file=sys.stderr,
                flush=True,
            )
    return runs


# ---------------------------------------------------------------------- the report
def _percentile(values: Sequence[float], q: float) -> float:
    vals = sorted(values)
    if not vals:
        return math.nan
    pos = q * (len(vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (pos - lo) * (vals[hi] - vals[lo])


def _bootstrap_mean(values: Sequence[float], n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """5th and 95th percentiles of the mean of ``values`` resampled (90% interval)."""
    if len(values) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    k = len(values)
    means = sorted(sum(values[rng.randrange(k)] for _ in range(k)) / k for _ in range(n))
    return means[int(0.05 * (n - 1))], means[int(0.95 * (n - 1))]


def _verdict(diffs: Sequence[float]) -> int:
    """+1 won, -1 lost beyond noise, 0 within it: the mean paired difference (over seeds)
    is more than twice its standard error and more than 0.01 of the range."""
    m = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return 0
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1))
    if abs(m) <= max(2.0 * sd / math.sqrt(len(diffs)), 0.01):
        return 0
    return 1 if m > 0 else -1


def summarize(
    s: Settings, runs: Mapping[tuple[str, str, int], Mapping[str, Any]]
) -> dict[str, Any]:
    """Per problem and method: normalized improvement after warm-up, its paired difference
    to the baseline's, normalized final best, candidates after warm-up; checks that every
    method of a (problem, seed) evaluated the same warm-up."""
    from benchmarks._metrics import run_metrics

    per: dict[str, dict[str, dict[str, Any]]] = {}
    warmup_differs: list[str] = []
    for index in range(s.problems):
        name = f"{s.set_name}-{index:02d}"
        per[name] = {}
        for seed in range(s.seeds):
            warm = {
                json.dumps([t["params"] for t in runs[name, m, seed]["trials"][: s.n_init]])
                for m in s.methods
                if m not in OPTUNA
            }
            if len(warm) > 1:
                warmup_differs.append(f"{name} seed {seed}")
        for method in s.methods:
            imp, final, post = [], [], []
            for seed in range(s.seeds):
                run = runs[name, method, seed]
                m = run_metrics(run)
                scale = run["range"]
                imp.append((m["improvement"] or 0.0) / scale)
                final.append(1.0 + m["final_best"] / scale)
                post.append(m["candidates_post"])
            per[name][method] = {"imp": imp, "final": final, "post": post}
        for method in s.methods:
            mine, base = per[name][method], per[name][BASELINE]
            diffs = [a - b for a, b in zip(mine["imp"], base["imp"], strict=True)]
            mine["diff"] = sum(diffs) / len(diffs)
            mine["verdict"] = _verdict(diffs)
            finals = [a - b for a, b in zip(mine["final"], base["final"], strict=True)]
            mine["final_diff"] = sum(finals) / len(finals)
    return {"per": per, "warmup_differs": warmup_differs}


def _mean_final(
    s: Settings, per: Mapping[str, Mapping[str, Mapping[str, Any]]], names: Sequence[str], m: str
) -> float:
    """Method ``m``'s normalized final best, averaged over its seeds and then the problems."""
    return sum(sum(per[n][m]["final"]) / s.seeds for n in names) / len(names)


def _method_rows(
    s: Settings, per: Mapping[str, Mapping[str, Mapping[str, Any]]], names: Sequence[str]
) -> list[str]:
    rows = []
    for method in s.methods:
        diffs = [per[n][method]["diff"] for n in names]
        verdicts = [per[n][method]["verdict"] for n in names]
        lo, hi = _bootstrap_mean(diffs)
        post = [sum(per[n][method]["post"]) / s.seeds for n in names]
        base_post = [sum(per[n][BASELINE]["post"]) / s.seeds for n in names]
        ratio = sum(post) / max(sum(base_post), 1e-12)
        final_diffs = [per[n][method]["final_diff"] for n in names]
        flo, fhi = _bootstrap_mean(final_diffs)
        final = (
            f"{sum(final_diffs) / len(final_diffs):+.3f} [{flo:+.3f}, {fhi:+.3f}] "
            f"| {_mean_final(s, per, names, method):.3f}"
        )
        if method in OPTUNA:  # its own start-up trials: no shared warm-up to improve on
            rows.append(f"| {method} | n/a | | | | | | {final} | n/a |")
            continue
        rows.append(
            f"| {method} | {sum(diffs) / len(diffs):+.3f} | [{lo:+.3f}, {hi:+.3f}] "
            f"| {verdict(lo, hi) if method != BASELINE else ''} | {_percentile(diffs, 0.1):+.3f} | {verdicts.count(1)}/{len(names)} "
            f"| {verdicts.count(-1)}/{len(names)} | {final} | {ratio:.2f}x |"
        )
    return rows


def _checks(
    s: Settings, per: Mapping[str, Mapping[str, Mapping[str, Any]]], names: Sequence[str]
) -> list[str]:
    """Issue 30's done-when checks for eeipu (when it ran), over all problems."""
    if "eeipu" not in s.methods:
        return []
    diffs = [per[n]["eeipu"]["diff"] for n in names]
    lo, hi = _bootstrap_mean(diffs)
    mean, p10 = sum(diffs) / len(diffs), _percentile(diffs, 0.1)
    lost = [per[n]["eeipu"]["verdict"] for n in names].count(-1)
    final = {m: _mean_final(s, per, names, m) for m in s.methods}
    items = [
        (
            "mean normalized improvement over EI > 0 with its 90% interval above 0",
            lo > 0,
            f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]",
        ),
        ("10th percentile >= -0.05", p10 >= -0.05, f"{p10:+.3f}"),
        (
            "loses to EI beyond noise on <= 10% of problems",
            lost <= 0.1 * len(names),
            f"{lost}/{len(names)}" + (" (one seed: no loss can be seen)" if s.seeds < 2 else ""),
        ),
    ]
    for m in OPTUNA:
        if m in s.methods:
            items.append(
                (
                    f"normalized final best >= {m}'s",
                    final["eeipu"] >= final[m],
                    f"{final['eeipu']:.3f} vs {final[m]:.3f}",
                )
            )
    return [
        "",
        f"Checks (issue 30's done-when, on this {s.set_name} set):",
        "",
        *[
            f"- [{'x' if ok else ' '}] {what}: **{'met' if ok else 'MISSED'}** ({detail})"
            for what, ok, detail in items
        ],
    ]


def write_report(s: Settings, runs: Mapping[tuple[str, str, int], Mapping[str, Any]]) -> Path:
    """``<results_dir>/family_<set>.md`` and ``.png`` from the raw runs; returns the page."""
    summary = summarize(s, runs)
    per = summary["per"]
    names = sorted(per)
    described = {n: generate(s.set_name, int(n.rsplit("-", 1)[1])).describe() for n in names}
    shapes = {n: d["shape"] for n, d in described.items()}
    header = (
        "| method | improvement vs EI: mean | (90% bootstrap) | verdict | 10th percentile "
        "| won | lost "
        "| final best vs EI (90% bootstrap) | normalized final best "
        "| candidates after warm-up vs EI |\n"
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    wall = sum(r["wall_seconds"] for r in runs.values())
    cmd = "python -m benchmarks.family " + " ".join(shlex.quote(a) for a in _argv(s))
    purpose = (
        "**development set**: the problems designs are chosen on"
        if s.set_name == "dev"
        else "**report set**: run only to report a design chosen on the development set"
    )
    lines = [
        f"# Benchmark: the problem family, {s.set_name} set",
        "",
        f"{s.problems} generated problems ({purpose}; `benchmarks/family.py` says how they are "
        f"drawn), {s.seeds} seeds each, methods {', '.join(s.methods)}. Budget "
        f"{s.budget:g} full trials ({s.budget * FULL_COST:g} units) per run, warm-up included; "
        f"{s.n_init} shared Sobol warm-up trials per seed; method options "
        f"{json.dumps(dict(s.method_options or {}))} (empty: each method's defaults)"
        + "".join(
            f"; `{label}` is {method} with {json.dumps(dict(extra))}"
            for label, (method, extra) in (s.variants or {}).items()
        )
        + ".",
        "",
        "```bash",
        f".venv/bin/python -m {cmd.removeprefix('python -m ')}",
        "```",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {wall / 60:.0f} min of run time summed over "
        f"{len(runs)} runs. Page written {_dt.datetime.now():%Y-%m-%d %H:%M}.",
        f"- {describe(runs.values())}",
        "- *vs EI*: per problem, the improvement after the warm-up (best at the end of the "
        "budget minus best at the end of the shared warm-up) minus plain EI's on the same "
        "seed, averaged over seeds, in units of the problem's range (0 minus the median "
        "objective of random configurations; the optimum is about 0). The mean and its 90% "
        "bootstrap interval are over problems; *won*/*lost*: problems where the mean paired "
        "difference is beyond twice its standard error over seeds and beyond 0.01. "
        "*verdict*: *ahead* when the interval of the mean lies above 0, *behind* when below, "
        "else *within noise*.",
        "- *normalized final best*: 1 + final best / range (0: a typical random "
        "configuration, about 1: the optimum); *final best vs EI*: its paired difference to "
        "EI's, mean over problems. On noisy problems every best is the true value of what "
        "the method would report (eeipu's methods: the configuration `Optimizer.recommend` "
        "names; Optuna: the best-looking trial).",
        "- Optuna's samplers (`optuna_gp`, `optuna_tpe`) start with their own "
        f"{s.n_init} random trials, not the shared warm-up, so they are compared on the "
        "final best only; they see the same simulated costs and cache (their proposals "
        "never repeat a prefix, so they never hit it).",
        "",
        *(
            [
                f"**Preliminary**: {s.seeds} seed{'s' if s.seeds != 1 else ''} per problem "
                "(3 is the family's design)"
                + (
                    "; with one seed no problem can be won or lost beyond noise, so won and "
                    "lost read 0."
                    if s.seeds < 2
                    else "."
                ),
                "",
            ]
            if s.seeds < 3
            else []
        ),
        "## All problems",
        "",
        header,
        *_method_rows(s, per, names),
        *_checks(s, per, names),
    ]
    for shape in SHAPES:
        members = [n for n in names if shapes[n] == shape]
        if members:
            lines += ["", f"## Shape `{shape}` ({len(members)} problems)", "", header]
            lines += _method_rows(s, per, members)
    lines += [
        "",
        "## Per problem (mean over seeds of the normalized improvement after warm-up)",
        "",
        "| problem | shape | stages | dims | cost shares | noise | " + " | ".join(s.methods) + " |",
        "|---|---|---:|---|---|---:|" + "---:|" * len(s.methods),
    ]
    for n in names:
        d = described[n]
        cells = []
        for method in s.methods:
            p = per[n][method]
            mark = "" if method in (BASELINE, *OPTUNA) else {1: " ▲", -1: " ▼", 0: ""}[p["verdict"]]
            cells.append(f"{sum(p['imp']) / s.seeds:.3f}{mark}")
        lines.append(
            f"| {n} | {d['shape']} | {d['stages']} | {'/'.join(map(str, d['dims']))} "
            f"| {'/'.join(f'{c:.2f}' for c in d['cost_shares'])} | {d['noise_sd']:g} "
            f"| {' | '.join(cells)} |"
        )
    lines += [
        "",
        "▲/▼: won/lost against EI beyond noise (not for Optuna's samplers: own start-up trials).",
        "",
    ]
    if summary["warmup_differs"]:
        lines.append(
            "**Warning**: the warm-up differed between methods on "
            + ", ".join(summary["warmup_differs"])
        )
    else:
        lines.append("Checked on the raw runs: every method evaluated the same warm-up per seed.")
    page = Path(s.results_dir) / f"family_{s.set_name}.md"
    page.parent.mkdir(parents=True, exist_ok=True)
    _plot(s, per, names, page.with_suffix(".png"))
    lines += ["", f"![sorted differences to EI]({page.with_suffix('.png').name})", ""]
    fd, tmp = tempfile.mkstemp(dir=page.parent, prefix=f".{page.name}.")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, page)
    return page


def _plot(
    s: Settings,
    per: Mapping[str, Mapping[str, Mapping[str, Any]]],
    names: Sequence[str],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method in s.methods:
        if method == BASELINE:
            continue
        diffs = sorted(per[n][method]["diff"] for n in names)
        ax.plot(range(1, len(diffs) + 1), diffs, marker=".", label=method)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("problems, sorted")
    ax.set_ylabel("improvement after warm-up minus EI's\n(fraction of the range)")
    ax.set_title(f"Problem family ({s.set_name} set): each method against plain EI")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- command line
def _argv(s: Settings) -> list[str]:
    out = ["--set", s.set_name, "--problems", str(s.problems), "--seeds", str(s.seeds)]
    out += ["--methods", *s.methods, "--budget", f"{s.budget:g}", "--n-init", str(s.n_init)]
    if s.method_options:
        out += ["--method-options", json.dumps(dict(s.method_options), sort_keys=True)]
    if s.reuse != "same_code":
        out += ["--reuse", s.reuse]
    for label, (method, extra) in (s.variants or {}).items():
        out += ["--variant", f"{label}={method}:{json.dumps(dict(extra), sort_keys=True)}"]
    return out


def _variant(text: str) -> tuple[str, tuple[str, dict[str, Any]]]:
    """``LABEL=METHOD:JSON`` -> (label, (method, options))."""
    label, sep, rest = text.partition("=")
    method, colon, options = rest.partition(":")
    try:
        extra = json.loads(options) if colon else {}
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: the options are not JSON ({e})") from None
    if not (sep and label and method and isinstance(extra, dict)):
        raise argparse.ArgumentTypeError(f"{text!r} is not LABEL=METHOD:{{JSON options}}")
    return label, (method, extra)


SMOKE = {
    "problems": 3,
    "seeds": 1,
    "budget": 4.0,
    "n_init": 3,
    "method_options": {
        "num_restarts": 2,
        "raw_samples": 32,
        "prefix_restarts": 1,
        "prefix_raw_samples": 16,
        "mc_samples": 32,
        "maxiter": 30,
    },
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.family",
        description="Judge methods on a family of generated multi-stage problems.",
    )
    parser.add_argument("--set", dest="set_name", choices=SETS, default="dev")
    parser.add_argument("--problems", type=int, default=40, help="problems 0..N-1 of the set")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--budget", type=float, default=20.0, help="in full trials")
    parser.add_argument("--n-init", type=int, default=5)
    parser.add_argument(
        "--method-options", type=json.loads, default=None, help="JSON, for every method"
    )
    parser.add_argument(
        "--variant",
        dest="variants",
        type=_variant,
        action="append",
        metavar="LABEL=METHOD:JSON",
        help="a method with extra options, named LABEL in --methods",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--reuse",
        choices=REUSE,
        default="same_code",
        help="same_code: reuse a raw run only if today's optimizer code made it",
    )
    parser.add_argument("--smoke", action="store_true", help="3 problems, tiny budget, temp dir")
    a = parser.parse_args(argv)
    given = dict(vars(a))
    smoke = given.pop("smoke")
    if smoke:
        given.update(SMOKE, results_dir=Path(tempfile.mkdtemp(prefix="eeipu-family-smoke-")))
    given["methods"] = tuple(given["methods"])
    given["variants"] = dict(given["variants"] or [])
    settings = Settings(**given)
    try:
        runs = run_family(settings)
        page = write_report(settings, runs)
    except FamilyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
