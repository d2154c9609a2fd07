"""The benchmark suite: every (method, seed) of a problem, then a table and a plot.

    .venv/bin/python -m benchmarks.suite problem=synthetic3 seeds=10
    .venv/bin/python -m benchmarks.suite problem=last_expensive
    .venv/bin/python -m benchmarks.suite problem=ml_stacking seeds=3
    .venv/bin/python -m benchmarks.suite problem=synthetic3 --smoke    # seconds, temp dir

Arguments are Hydra overrides of ``benchmarks/conf/config.yaml`` (group ``problem/``).

* Synthetic problems (``eeipu.testing.VARIANTS``) run in process through
  :func:`eeipu.testing.simulate` (the optimizer's own ask/tell loop, exact simulated
  cache), in at most ``workers`` processes with torch on one thread each. The warm-up is
  shared per seed by construction: ``Optimizer`` draws its ``n_init`` warm-up points from a
  Sobol sequence of the seed alone, so every method evaluates the same ones (the report
  checks this on the raw runs).
* Real pipelines run through the Prefect flows (``flows.tune.run``), one study per
  (method, seed), one after the other (costs are measured wall seconds: parallel studies
  would perturb each other). For fairness each study gets *its own* cache, so no method
  profits from another's work; the warm-up is run once per seed and copied into every
  method's cache and journal, so all methods start from the same warm-up trials, measured
  costs and cached stage outputs (re-measuring it per method would give each a different,
  noisy B_0).

Each (method, seed) run is saved as raw JSON under ``<results_dir>/raw/<problem>/`` with
the settings it ran with; a later call reuses every raw run whose settings match, so adding
a method (or seeds) runs only what is missing. Then ``<results_dir>/<problem>.md`` (tables,
the exact command, machine facts) and ``<problem>.png`` (best objective vs cumulative cost)
are rewritten from the raw runs.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._examples import example_search_path, use_examples
from benchmarks._provenance import (
    CODE_PATHS,
    PIPELINE_CODE_PATHS,
    REUSE,
    code_id,
    describe,
    made_by,
    provenance,
    reusable,
    reuse_note,
)
from flows.conf import CONFIG_DIR
from flows.records import TrialRecord, read_records

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "benchmarks" / "conf"

__all__ = [
    "SuiteError",
    "load_config",
    "load_raw",
    "main",
    "raw_run",
    "run_simulated",
    "run_suite",
    "save_json",
]


class SuiteError(ValueError):
    """A bad suite configuration (the message names the key and the rule)."""


# ---------------------------------------------------------------------- configuration
def load_config(overrides: Sequence[str]) -> dict[str, Any]:
    """Compose ``benchmarks/conf/config.yaml`` with ``overrides`` into a plain, checked dict;
    ``smoke=true`` applies ``smoke_settings`` (explicit overrides still win)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    if out["smoke"]:
        for key, value in out["smoke_settings"].items():
            if key not in given:
                out[key] = value
        if "results_dir" not in given:
            out["results_dir"] = tempfile.mkdtemp(prefix="eeipu-bench-smoke-")
    _check(out)
    return out


def _check(cfg: Mapping[str, Any]) -> None:
    if cfg["problem"].get("kind") not in ("synthetic", "pipeline"):
        raise SuiteError(
            f"`problem.kind` must be 'synthetic' or 'pipeline', but got {cfg['problem'].get('kind')!r}"
        )
    for key in ("seeds", "n_init", "workers"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SuiteError(f"`{key}` must be a positive integer, but got {v!r}")
    if not (isinstance(cfg["budget"], int | float) and cfg["budget"] > 0):
        raise SuiteError(f"`budget` must be a positive number, but got {cfg['budget']!r}")
    if cfg["reuse"] not in REUSE:
        raise SuiteError(f"`reuse` must be one of {list(REUSE)}, but got {cfg['reuse']!r}")
    if cfg["missing_methods"] not in ("skip", "error"):
        raise SuiteError(
            f"`missing_methods` must be 'skip' or 'error', but got {cfg['missing_methods']!r}"
        )
    if not (0.0 < float(cfg["target_fraction"]) <= 1.0):
        raise SuiteError(f"`target_fraction` must be in (0, 1], but got {cfg['target_fraction']!r}")
    if not cfg["methods"] or len(set(cfg["methods"])) != len(cfg["methods"]):
        raise SuiteError(f"`methods` must be distinct method names, but got {cfg['methods']!r}")


def available_methods(cfg: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(methods to run, configured methods that ``eeipu.METHODS`` does not know)."""
    from eeipu import METHODS

    known = [m for m in cfg["methods"] if m in METHODS]
    missing = [m for m in cfg["methods"] if m not in METHODS]
    if missing and cfg["missing_methods"] == "error":
        raise SuiteError(
            f"`methods` names {missing}, unknown to eeipu.METHODS {sorted(METHODS)}; "
            "drop them or set missing_methods=skip"
        )
    return known, missing


def fingerprint(cfg: Mapping[str, Any], method: str, seed: int) -> dict[str, Any]:
    """What a raw run depends on: a cached run is reused only when this matches."""
    problem = {
        k: v
        for k, v in cfg["problem"].items()
        if k
        not in (
            "budget",
            "n_init",
            "smoke_budget",
            "description",
            "checks",
            "done_when",
            "notes",
            "seeds",
        )
    }
    return {
        "problem": problem,
        "budget": float(cfg["budget"]),
        "n_init": cfg["n_init"],
        "load_cost": cfg["load_cost"],
        "max_prefixes": cfg["max_prefixes"],
        "method_options": cfg["method_options"],
        "method": method,
        "seed": seed,
    }


def _raw_dir(cfg: Mapping[str, Any]) -> Path:
    return Path(cfg["results_dir"]) / "raw" / cfg["problem"]["name"]


def _raw_path(cfg: Mapping[str, Any], method: str, seed: int) -> Path:
    return _raw_dir(cfg) / f"{method}-seed{seed}.json"


def load_raw(path: Path, fp: Mapping[str, Any]) -> dict[str, Any] | None:
    """The raw run saved at ``path`` if its settings are ``fp``, else None."""
    try:
        run = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return run if run.get("fingerprint") == json.loads(json.dumps(fp)) else None


def _code_paths(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The code a run of ``cfg``'s problem depends on (simulated or through the flows)."""
    return CODE_PATHS if cfg["problem"]["kind"] == "synthetic" else PIPELINE_CODE_PATHS


def _cached(cfg: Mapping[str, Any], method: str, seed: int, code: str | None) -> dict | None:
    """The raw run of (method, seed) that ``cfg`` may reuse, or None."""
    run = load_raw(_raw_path(cfg, method, seed), fingerprint(cfg, method, seed))
    return run if reusable(run, cfg["reuse"], code) else None


def save_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON, atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _seeds(cfg: Mapping[str, Any]) -> list[int]:
    return list(range(cfg["first_seed"], cfg["first_seed"] + cfg["seeds"]))


# ---------------------------------------------------------------------- synthetic runs
def _make_optimizer(space: Any, job: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """An Optimizer for the job with the options its method uses (noted in the run)."""
    from eeipu import Optimizer, options_used_by

    # One method_options dict serves every method; each takes the options it uses.
    options = options_used_by(job["method"], job["method_options"])
    kwargs = {
        "method": job["method"],
        "budget": job["budget"],
        "n_init": job["n_init"],
        "seed": job["seed"],
        "max_prefixes": job["max_prefixes"],
        "num_threads": 1,
    }
    return Optimizer(space, method_options=options, **kwargs), options


def run_synthetic(job: Mapping[str, Any]) -> dict[str, Any]:
    """One (method, seed) on a synthetic variant; returns the raw run."""
    from eeipu.testing import synthetic_variant

    return run_simulated(synthetic_variant(job["variant"], seed=job["seed"]), job)


def run_simulated(problem: Any, job: Mapping[str, Any]) -> dict[str, Any]:
    """One (method, seed) of ``job`` on a problem simulated in process
    (:func:`eeipu.testing.simulate`: ``space_dict``, ``optimum``, ``noise_sd`` and
    ``true_objective`` besides what ``simulate`` needs); returns the raw run."""
    import torch

    torch.set_num_threads(1)
    from eeipu import SearchSpace
    from eeipu.testing import simulate

    space = SearchSpace.from_dict(problem.space_dict())
    opt, used = _make_optimizer(space, job)
    trials: list[dict[str, Any]] = []
    start = last = time.perf_counter()

    def record(told: Any, _opt: Any) -> None:
        nonlocal last
        now = time.perf_counter()
        trials.append(
            {
                "number": told.number,
                "origin": told.origin,
                "objective": told.objective,
                **(_truth(problem, told, _opt) if problem.noise_sd else {}),
                "cost": sum(told.costs.values()),
                "n_cached": len(told.cached),
                "seconds": round(now - last, 4),
                "params": told.params,
                **({} if told.acq_terms is None else {"acq_terms": told.acq_terms}),
            }
        )
        last = now

    simulate(
        opt, problem, load_cost=job["load_cost"], max_trials=job["max_trials"], on_trial=record
    )
    return raw_run(job, problem, trials, used, time.perf_counter() - start)


def raw_run(
    job: Mapping[str, Any],
    problem: Any,
    trials: list[dict[str, Any]],
    used: Mapping[str, Any],
    wall_seconds: float,
) -> dict[str, Any]:
    """The raw run of a simulated (method, seed) job: its settings, the trials (in telling
    order), the options the method ran with and its wall time."""
    return {
        "problem": job["problem"],
        "method": job["method"],
        "seed": job["seed"],
        "budget": job["budget"],
        "n_init": job["n_init"],
        "direction": "maximize",
        "optimum": problem.optimum(),
        "method_options_used": dict(used),
        "wall_seconds": round(wall_seconds, 2),
        "trials": trials,
        "fingerprint": job["fingerprint"],
        "provenance": job.get("provenance"),
    }


def _truth(problem: Any, told: Any, opt: Any) -> dict[str, Any]:
    """On a noisy problem: the told trial's true objective, and the true objective of the
    configuration the optimizer would report now (:meth:`eeipu.Optimizer.recommend`)."""
    out: dict[str, Any] = {}
    if told.objective is not None:
        out["true_objective"] = problem.true_objective(told.params)
    rec = opt.recommend()
    if rec is not None:
        out["reported_true"] = problem.true_objective(rec[0].params)
    return out


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_synthetic_jobs(jobs: list[dict[str, Any]], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield run_synthetic(job)
        return
    import multiprocessing as mp

    # spawn: a fresh interpreter per worker (torch and fork do not mix well).
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(run_synthetic, jobs)


# ---------------------------------------------------------------------- real pipelines
def _study_config(
    cfg: Mapping[str, Any], method: str, seed: int, storage: Path, study: str, max_trials: int
) -> dict[str, Any]:
    """A flows.tune config dict, composed from ``flows/conf/config.yaml`` like the CLI does."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from eeipu import options_used_by

    problem = cfg["problem"]
    use_examples()  # the example projects' modules, as `eeipu tune` in their folder finds them
    overrides = [
        example_search_path(),
        f"pipeline={problem['pipeline']}",
        f"size={problem['size']}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        composed = compose("config", overrides=overrides)
    c = OmegaConf.to_container(composed, resolve=False)
    assert isinstance(c, dict)
    c.update(
        study=study,
        seed=seed,
        budget=float(cfg["budget"]),
        n_init=cfg["n_init"],
        max_trials=max_trials,
        output_dir=str(storage.parent / "outputs" / study),
        progress=False,
        continue_on_failure=True,
        # Pipeline problems may charge each trial its ask() and orchestration wall time.
        charge_overhead=bool(problem.get("charge_overhead", False)),
    )
    options = options_used_by(method, cfg["method_options"])
    c["optimizer"] = {"method": method, "options": options, "max_prefixes": cfg["max_prefixes"]}
    c["storage"] = {"url": str(storage), "options": {}}
    out = OmegaConf.to_container(OmegaConf.create(c), resolve=True)
    assert isinstance(out, dict)
    return out


def _trial_rows(records: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    return [
        {
            "number": r.number,
            "origin": r.origin or "",
            "objective": r.objective if r.complete else None,
            "cost": r.cost,
            "n_cached": len(r.cached),
            "seconds": r.ask_seconds,
            "params": r.params,
            **({"acq_terms": r.acq_terms} if r.acq_terms is not None else {}),
        }
        for r in records
    ]


def _pipeline_runs(
    cfg: Mapping[str, Any], todo: Mapping[int, list[str]]
) -> Iterator[dict[str, Any]]:
    """Run the missing (method, seed) studies of a real pipeline through the flows."""
    import flows.tune  # noqa: F401  (sets Prefect's environment defaults)
    from flows import StudyConfig, StudyJournal
    from flows.study import prepare
    from flows.tune import run
    from stages import Store

    name = cfg["problem"]["name"]
    work = Path(cfg["work_dir"]) / name
    made = provenance(PIPELINE_CODE_PATHS)
    for seed, methods in todo.items():
        warm_store = work / f"seed{seed}" / "warmup"
        warm_json = _raw_dir(cfg) / f"warmup-seed{seed}.json"
        warm_fp = {**fingerprint(cfg, "warmup", seed), "method_options": None}
        saved = load_raw(warm_json, warm_fp)
        if saved is None or not warm_store.exists():
            # Run the shared warm-up once (the first n_init trials are the seed's Sobol
            # points whatever the method); with saved records, only to rebuild the cache.
            shutil.rmtree(warm_store, ignore_errors=True)
            study = f"{name}-warmup-seed{seed}"
            wcfg = _study_config(cfg, "random", seed, warm_store, study, cfg["n_init"])
            run(wcfg)
            records = StudyJournal(Store(str(warm_store)), study).records()
            if saved is None:
                saved = {"fingerprint": warm_fp, "records": [r.to_json() for r in records]}
                save_json(warm_json, saved)
        for method in methods:
            store_dir = work / f"seed{seed}" / method
            shutil.rmtree(store_dir, ignore_errors=True)
            shutil.copytree(warm_store, store_dir, ignore=shutil.ignore_patterns("studies"))
            study = f"{name}-{method}-seed{seed}"
            mcfg = _study_config(cfg, method, seed, store_dir, study, cfg["problem"]["max_trials"])
            _, journal = prepare(StudyConfig.from_mapping(mcfg))
            for rec in read_records(saved["records"]):
                journal.append(rec)
            start = time.perf_counter()
            run(mcfg)
            wall = time.perf_counter() - start
            records = journal.records()
            yield {
                "problem": name,
                "method": method,
                "seed": seed,
                "budget": float(cfg["budget"]),
                "n_init": cfg["n_init"],
                "direction": mcfg["pipeline"]["direction"],
                "method_options_used": mcfg["optimizer"]["options"],
                "wall_seconds": round(wall, 2),
                "trials": _trial_rows(records),
                "fingerprint": fingerprint(cfg, method, seed),
                "provenance": made,
            }


# ---------------------------------------------------------------------- the suite
def _progress(run: Mapping[str, Any]) -> str:
    from benchmarks._metrics import run_metrics

    m = run_metrics(run)
    best = "-" if m["final_best"] is None else f"{m['final_best']:.5g}"
    return (
        f"{run['problem']} {run['method']:<9} seed {run['seed']:>2}: {m['candidates']:>3} trials "
        f"({m['candidates_post']} after warm-up, {m['hits_post']} with cache hits), "
        f"spent {m['spent']:.4g}/{run['budget']:g}, best {best}, wall {run['wall_seconds']:.0f}s"
    )


def _machine_facts(runs: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> list[str]:
    import botorch
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    walls = [r["wall_seconds"] for by_seed in runs.values() for r in by_seed.values()]
    return [
        f"Machine: {cpu}, {os.cpu_count()} cores (shared with other jobs; load average "
        f"{os.getloadavg()[0]:.1f} when this page was written), Python "
        f"{platform.python_version()}, torch {torch.__version__}, botorch {botorch.__version__}, "
        "one torch thread per run.",
        f"Run wall time: {sum(walls) / 60:.1f} min summed over {len(walls)} runs "
        f"(median {sorted(walls)[len(walls) // 2] if walls else 0:.0f} s per run). Page written "
        f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.",
        describe(r for by_seed in runs.values() for r in by_seed.values()),
    ]


def _warmup_note(runs: Mapping[str, Mapping[int, Mapping[str, Any]]], n_init: int) -> str:
    differ = []
    for seed in {s for by_seed in runs.values() for s in by_seed}:
        warmups = {
            json.dumps([t["params"] for t in by_seed[seed]["trials"][:n_init]], sort_keys=True)
            for by_seed in runs.values()
            if seed in by_seed
        }
        if len(warmups) > 1:
            differ.append(seed)
    if differ:
        return f"WARNING: the warm-up trials differ between methods on seeds {sorted(differ)}."
    return (
        f"Checked on the raw runs: every method evaluated the same {n_init} warm-up "
        "configurations on each seed."
    )


def write_report(
    cfg: Mapping[str, Any],
    methods: Sequence[str],
    missing: Sequence[str],
    command: str,
    code: str | None,
) -> tuple[Path, Path]:
    """Rebuild ``<problem>.md`` and ``<problem>.png`` from the raw runs that exist and may be
    reused (``cfg['reuse']``; ``code``: today's optimizer code)."""
    from benchmarks._report import Report, build_report, write_plot

    problem = cfg["problem"]
    seeds = _seeds(cfg)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    notes = []
    for m in methods:
        got = {}
        for s in seeds:
            run = _cached(cfg, m, s, code)
            if run is not None:
                got[s] = run
        if len(got) == len(seeds):
            runs[m] = got
        else:
            notes.append(f"{m}: only {len(got)}/{len(seeds)} seeds ran; left out of the tables.")
    if missing:
        notes.append(
            f"Not in `eeipu.METHODS` when this page was written, so not run: {', '.join(missing)} "
            "(re-run the command once they are registered: only the missing runs execute)."
        )
    if cfg["reference"] not in runs:
        raise SuiteError(
            f"the reference method {cfg['reference']!r} has no complete runs"
            + (
                ""
                if cfg["reuse"] == "any"
                else " made by today's optimizer code (or set reuse=any)"
            )
        )
    notes.append(_warmup_note(runs, cfg["n_init"]))
    capped = {
        m: sum(sum(t["cost"] for t in r["trials"]) < r["budget"] for r in by_seed.values())
        for m, by_seed in runs.items()
    }
    if any(capped.values()):
        notes.append(
            f"Stopped by the max_trials cap ({problem.get('max_trials')}) before the budget was "
            "spent, so their candidates are a lower bound: "
            + ", ".join(f"{m} {k}/{len(seeds)} seeds" for m, k in capped.items() if k)
            + "."
        )
    opts = {m: runs[m][seeds[0]]["method_options_used"] for m in runs}
    if cfg["method_options"]:
        notes.append(f"Method options used: {json.dumps(opts, sort_keys=True)}.")
    notes += list(problem.get("notes") or [])
    report = Report(runs, seeds, cfg["reference"], float(cfg["target_fraction"]))
    name = problem["name"]
    out_dir = Path(cfg["results_dir"])
    facts = [
        f"Setting: budget {cfg['budget']:g} cost units per run (warm-up included), "
        f"{cfg['n_init']} shared warm-up trials, seeds {seeds[0]}..{seeds[-1]} "
        f"({len(seeds)}), methods {', '.join(runs)}"
        + (f", cache hit cost {cfg['load_cost']:g}" if problem["kind"] == "synthetic" else "")
        + (f", max_trials {problem['max_trials']}" if problem["kind"] == "pipeline" else "")
        + (
            ", charge_overhead (each trial also costs its ask() and orchestration wall "
            "seconds: the budget is wall time)"
            if problem.get("charge_overhead")
            else ""
        )
        + (" (SMOKE settings: not a result)" if cfg["smoke"] else "")
        + ".",
        *_machine_facts(runs),
    ]
    md = build_report(
        report,
        title=name,
        description=problem.get("description", ""),
        command=command,
        facts=facts,
        notes=notes,
        checks=problem.get("checks") or [],
        done_when=bool(problem.get("done_when")),
        plot_name=f"{name}.png",
    )
    md_path, png_path = out_dir / f"{name}.md", out_dir / f"{name}.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path.write_text(md)
    write_plot(report, png_path, name, float(cfg["budget"]))
    return md_path, png_path


def run_suite(cfg: Mapping[str, Any], command: str) -> tuple[Path, Path]:
    """Run every missing (method, seed), then write the report; returns (md, png) paths."""
    methods, missing = available_methods(cfg)
    for m in missing:
        print(f"note: method {m!r} is not in eeipu.METHODS yet; skipped", flush=True)
    seeds = _seeds(cfg)
    problem = cfg["problem"]
    todo: dict[int, list[str]] = {}
    code = code_id(_code_paths(cfg))
    stale = 0
    for s in seeds:
        for m in methods:
            run = _cached(cfg, m, s, code)
            if cfg["rerun"] or run is None:
                todo.setdefault(s, []).append(m)
            elif not made_by(run, code):
                stale += 1
    if stale:
        print(reuse_note(stale, "reuse=any"), flush=True)
    n_jobs = sum(len(v) for v in todo.values())
    if cfg["report_only"]:
        todo, n_jobs = {}, 0
    print(
        f"{problem['name']}: {n_jobs} runs to do, {len(methods) * len(seeds) - n_jobs} cached "
        f"(results in {cfg['results_dir']})",
        flush=True,
    )
    if n_jobs and problem["kind"] == "synthetic":
        made = provenance()
        jobs = [
            {
                "problem": problem["name"],
                "variant": problem["variant"],
                "method": m,
                "seed": s,
                "budget": float(cfg["budget"]),
                "n_init": cfg["n_init"],
                "load_cost": cfg["load_cost"],
                "max_prefixes": cfg["max_prefixes"],
                "method_options": cfg["method_options"],
                "max_trials": problem.get("max_trials"),
                "fingerprint": fingerprint(cfg, m, s),
                "provenance": made,
            }
            for s, ms in todo.items()
            for m in ms
        ]
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        for run in _run_synthetic_jobs(jobs, cfg["workers"]):
            save_json(_raw_path(cfg, run["method"], run["seed"]), run)
            print(_progress(run), flush=True)
    elif n_jobs:
        for run in _pipeline_runs(cfg, todo):
            save_json(_raw_path(cfg, run["method"], run["seed"]), run)
            print(_progress(run), flush=True)
    return write_report(cfg, methods, missing, command, code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite",
        description="Run the benchmark suite (Hydra overrides of benchmarks/conf/config.yaml).",
    )
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. problem=synthetic3 seeds=10")
    parser.add_argument("--smoke", action="store_true", help="same as smoke=true")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides) + (["smoke=true"] if args.smoke else [])
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from eeipu import EEIPUError

    try:
        cfg = load_config(overrides)
        command = " ".join([".venv/bin/python -m benchmarks.suite", *map(shlex.quote, overrides)])
        md, png = run_suite(cfg, command)
    except (SuiteError, EEIPUError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {md} and {png}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
