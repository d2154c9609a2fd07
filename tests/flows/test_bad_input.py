"""Bad input, tried systematically through the CLI entry point (Hydra's main, in process):
each case exits non-zero with one line that names the key and the rule, and writes nothing
outside the output folder (no cache, no journal, no flow run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fsspec.registry import known_implementations

from flows.conf import CONFIG_DIR

CASES = [
    # --- study settings
    (["budget=-1"], "error: `budget` must be a positive number, but got -1"),
    (["budget=lots"], "error: `budget` must be a positive number, but got 'lots'"),
    (["budget=null"], "error: `budget` is required but missing"),
    (["n_init=0"], "error: `n_init` must be a positive integer, but got 0"),
    (["n_init=2.5"], "error: `n_init` must be a positive integer, but got 2.5"),
    (["seed=-3"], "error: `seed` must be >= 0, but got -3"),
    (["study=a b"], "error: `study` must be 1-100 letters"),
    (["retries=-2"], "error: `retries` must be >= 0"),
    (["retry_delay_seconds=-1"], "error: `retry_delay_seconds` must be >= 0, but got -1"),
    (["max_trials=0"], "error: `max_trials` must be a positive integer, but got 0"),
    (["continue_on_failure=maybe"], "error: `continue_on_failure` must be true or false"),
    (["max_failures_in_a_row=0"], "error: `max_failures_in_a_row` must be a positive integer"),
    # --- search spaces
    (
        ["pipeline.space.train.x1.high=-1"],
        "error: `pipeline.space`: `low < high` must hold, but got low=0.0, high=-1 "
        "(stage 'train', parameter 'x1')",
    ),
    (["pipeline.space.prep.x0.type=double"], "`type` must be one of"),
    (["+pipeline.space.prep.x0.log=true"], "(stage 'prep', parameter 'x0')"),
    (["+pipeline.space.ghost={x: {type: float, low: 0, high: 1}}"], "unknown stage(s) ['ghost']"),
    (
        ["~pipeline.space.prep.x0", "+pipeline.space.prep.x0={type: categorical, choices: []}"],
        "(stage 'prep', parameter 'x0')",
    ),
    (["pipeline.direction=up"], "error: `pipeline.direction` must be 'maximize' or 'minimize'"),
    # --- unknown keys: one line naming the key and the closest valid one (or the valid ones)
    (
        ["+pipeline.direciton=minimize"],
        "error: unknown key `pipeline.direciton`; did you mean `pipeline.direction`?",
    ),
    (
        ["pipeline.direciton=minimize"],
        "error: unknown key `pipeline.direciton`; did you mean `pipeline.direction`?",
    ),
    (["+budgit=3"], "error: unknown key `budgit`; did you mean `budget`?"),
    (["+zzz=1"], "error: unknown key `zzz`; the keys of a study are budget, charge_overhead,"),
    (["+pipeline.zzz=1"], "error: unknown key `pipeline.zzz`; the keys of `pipeline` are "),
    (["+storage.max_byte=5MB"], "error: unknown key `storage.max_byte`; did you mean `storage"),
    (["+optimizer.max_prefix=3"], "error: unknown key `optimizer.max_prefix`; did you mean `"),
    # --- pipelines
    (
        ["pipeline=nope"],
        "error: no pipeline config named 'nope'; the pipeline configs are kedro, synthetic (add",
    ),
    (
        ["pipeline=synthetc"],
        "error: no pipeline config named 'synthetc'; did you mean 'synthetic'?",
    ),
    (["pipeline=nan"], "error: `pipeline=nan` must name a config, but Hydra reads nan as a value"),
    (["pipeline.target=stages.nothing_here"], "error: `pipeline.target` must name an importable"),
    (["+pipeline.kwargs.fail_stage=zz"], "`fail_stage` must be one of"),
    (
        ["+pipeline.kwargs.bogus=1"],
        "error: `pipeline.kwargs` do not fit stages.testing.synthetic_pipeline",
    ),
    # --- optimizer
    (["optimizer=nope"], "error: no optimizer config named 'nope'; the optimizer configs are "),
    (["optimizer=1"], "error: `optimizer=1` must name a config, but Hydra reads 1 as a value"),
    (["+optimizer.options.num_restarts=0"], "`num_restarts` must be a positive integer, but got 0"),
    (
        ["+optimizer.options.bogus=1"],
        "error: unknown key `optimizer.options.bogus`: method 'eeipu' does not use it; "
        "its options are ['cost_inputs', ",
    ),
    (
        ["+optimizer.options.num_restart=2"],
        "method 'eeipu' does not use it (did you mean 'num_restarts'?); its options are [",
    ),
    (
        ["optimizer=ei", "+optimizer.options.prefix_starts=4"],
        "error: unknown key `optimizer.options.prefix_starts`: method 'ei' does not use it; "
        "its options are ['failures', 'incumbent', 'maxiter', 'mc_samples', 'num_restarts', "
        "'raw_samples', 'warm_start']",
    ),
    (
        ["optimizer=lambo", "+optimizer.options.mc_samples=64"],
        "error: unknown key `optimizer.options.mc_samples`: method 'lambo' does not use it",
    ),
    (
        ["optimizer=random", "+optimizer.options.num_restarts=2"],
        "method 'random' does not use it; it takes no options",
    ),
    (["optimizer.max_prefixes=-1"], "error: `optimizer.max_prefixes` must be >= 0, but got -1"),
    # --- storage
    (["storage=nope"], "error: no storage config named 'nope'; the storage configs are local, s3"),
    (["storage=s3", "storage.url=???"], "error: `storage.url` is required but missing"),
    (["storage=s3", "storage.url=s3://Bad_Bucket/x"], "`storage.url` must look like s3://bucket"),
    (["storage.max_bytes=lots"], "error: `storage.max_bytes` must be a positive size"),
    (["storage.retry_seconds=-1"], "error: `storage.retry_seconds` must be >= 0, but got -1"),
    (["storage.url=/proc/forbidden/x"], "error: cannot use storage /proc/forbidden/x: "),
    (["storage.url=bogus://x"], "error: cannot use storage bogus://x: fsspec knows no protocol"),
    # the install hint is fsspec's own (its registry names the package each protocol needs)
    (
        ["storage.url=gs://bucket/x"],
        f"error: cannot use storage gs://bucket/x: {known_implementations['gs']['err']}",
    ),
    # --- CLI overrides
    (["bogus_key=1"], "error: unknown key `bogus_key`; the keys of a study are budget, "),
    (["budgit=3"], "error: unknown key `budgit`; did you mean `budget`?"),
    (
        ["pipeline.kwargs.fail_stage=train"],
        "error: `pipeline.kwargs.fail_stage` is not in the config; add it with a leading +: "
        "+pipeline.kwargs.fail_stage=train",
    ),
    (["budget"], "error: cannot read the override 'budget' (missing EQUAL at '<EOF>')"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_exits_nonzero_with_one_line(args, message, tmp_path, monkeypatch, capsys):
    from flows.tune import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # the gs:// case: gcsfs is not installed
    storage = [] if any(a.startswith("storage") for a in args) else ["storage.url=cache"]
    monkeypatch.setattr(sys, "argv", ["flows.tune", f"--config-path={CONFIG_DIR}", *args, *storage])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if message in line]
    assert lines, err[-2000:]
    if message.startswith("error: "):
        assert info.value.code == 2
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert "Traceback" not in err
    written = {p.relative_to(tmp_path).parts[0] for p in Path(tmp_path).rglob("*")}
    assert written <= {"outputs"}, f"wrote {written} outside the output folder"


def test_the_table_is_wide_enough():
    assert len(CASES) >= 20
