"""`eeipu studies`, `show`, `best` and `cache` on real (tiny) studies, local and on S3."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from flows import StudyJournal, reuse_value
from flows.conf import CONFIG_DIR
from flows.inspection import (
    DEFAULT_STORAGE,
    best_main,
    cache_main,
    human_bytes,
    show_main,
    studies_main,
)
from flows.records import TrialRecord
from stages import Store
from stages.testing import synthetic_pipeline
from tests.helpers import OPTIMIZER_FAST, composed

TINY = [*OPTIMIZER_FAST, "budget=30", "n_init=2", "progress=false"]


def _run(url: str, study: str, *overrides: str, out: Path) -> None:
    from flows.tune import run

    cfg = composed(*TINY, f"study={study}", f"storage.url={url}", *overrides)
    cfg["output_dir"] = str(out / study)
    run(cfg)


# One xdist worker (make test runs two) runs these studies once: session scope, as xdist may
# interleave other modules' tests with these.
pytestmark = pytest.mark.xdist_group("inspection")


@pytest.fixture(scope="session")
def storage(prefect_harness, tmp_path_factory) -> Path:
    """Two 4-trial studies (alpha, then beta, whose train stage fails for x0 > 0.6) in one
    local storage, `.eeipu/cache` under a folder of its own (the default `--storage` there)."""
    root = tmp_path_factory.mktemp("inspect")
    url = root / ".eeipu" / "cache"
    _run(str(url), "alpha", "max_trials=4", out=root / "runs")
    fail = ["+pipeline.kwargs.fail_stage=train", "+pipeline.kwargs.fail_above=0.6"]
    # EI has no prefixes to search: it takes none of the prefix_* options.
    ei = ["optimizer=ei", *(f"~{o[1:].split('=')[0]}" for o in TINY if "options.prefix_" in o)]
    _run(str(url), "beta", "max_trials=4", "seed=1", *ei, *fail, out=root / "runs")
    return url


def _records(url, study: str) -> list[TrialRecord]:
    return StudyJournal(Store(url), study).records()


def _rows(text: str, header: str) -> list[list[str]]:
    """The whitespace-split rows of the table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


# ---------------------------------------------------------------------- eeipu studies
def test_studies_lists_each_study_with_counts_spent_and_best(storage, capsys):
    assert studies_main(["--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    rows = {row[0]: row for row in _rows(out, "STUDY")}
    assert set(rows) == {"alpha", "beta"}
    for name, method in (("alpha", "eeipu"), ("beta", "ei")):
        records = _records(storage, name)
        best = max(r.objective for r in records if r.complete)
        spent = sum(sum(r.costs.values()) for r in records)
        last = max(r.told_at for r in records)
        assert rows[name] == [
            name,
            method,
            "synthetic",
            str(len(records)),
            str(sum(not r.complete for r in records)),
            f"{spent:.4g}/30",
            f"{best:.6g}",
            datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ]
        assert len(records) == 4
    assert rows["alpha"][4] == "0" and int(rows["beta"][4]) >= 1
    assert [row[0] for row in _rows(out, "STUDY")] == ["beta", "alpha"]  # newest first


def test_default_storage_is_the_shipped_configs(storage, capsys, monkeypatch):
    shipped = yaml.safe_load((CONFIG_DIR / "storage" / "local.yaml").read_text())["url"]
    assert shipped == DEFAULT_STORAGE
    monkeypatch.chdir(storage.parents[1])
    assert studies_main([]) == 0
    assert {row[0] for row in _rows(capsys.readouterr().out, "STUDY")} == {"alpha", "beta"}


def test_a_storage_without_studies_says_so(tmp_path, capsys):
    assert studies_main(["--storage", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"no studies in {tmp_path}\n"
    assert cache_main(["--storage", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"no cache entries in {tmp_path}\n"


@pytest.mark.parametrize("command", [studies_main, show_main, best_main, cache_main])
def test_help_names_the_subcommand(command, capsys):
    with pytest.raises(SystemExit) as info:
        command(["--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: eeipu ")


# ---------------------------------------------------------------------- eeipu show
def _outputs(storage: Path, study: str) -> Path:
    """Where the fixture's run of ``study`` wrote its outputs (its ``output_dir``)."""
    return storage.parents[1] / "runs" / study


def _documents(out: str, title: str) -> list[str]:
    """The YAML documents printed under a line starting with ``title``, up to a blank line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_show_prints_trials_and_best_and_writes_nothing(storage, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert show_main(["alpha", "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # no outputs/alpha, nothing else
    assert "wrote:" not in out

    records = _records(storage, "alpha")
    best = max(records, key=lambda r: r.objective)
    document = "\n".join(_documents(out, "best configuration (eeipu best alpha):"))
    assert yaml.safe_load(document) == best.params
    assert f"# trial {best.number}, objective {best.objective:.6g}" in document
    # No best.yaml under ./outputs/alpha: the recommended configuration is unknown here.
    assert "recommended configuration" not in out
    rows = _rows(out, "TRIAL")
    assert [int(row[0]) for row in rows] == [r.number for r in records]
    for row, record in zip(rows, records, strict=True):
        assert row[1] == f"{record.objective:.6g}"
        assert row[3] == (",".join(record.cached) or "-") and row[4] == record.state
        assert f"prep.x0={record.params['prep']['x0']:.6g}" in row


def test_show_leaves_the_studys_best_yaml_byte_identical(storage, capsys, monkeypatch):
    folder = _outputs(storage, "alpha")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert b"\nrecommended:\n" in before["best.yaml"]
    monkeypatch.chdir(folder.parent)  # outputs of its own would land in ./outputs/alpha
    assert show_main(["alpha", "--storage", str(storage), "--outputs", str(folder)]) == 0
    out = capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["alpha", "beta"]
    recommended = yaml.safe_load(before["best.yaml"])["recommended"]
    document = "\n".join(_documents(out, "recommended configuration (eeipu best alpha"))
    assert yaml.safe_load(document) == recommended["params"]
    assert f"posterior mean {recommended['posterior_mean']:.6g}, from {folder}" in document


def test_show_write_writes_the_outputs_and_keeps_the_recommended_section(storage, capsys, tmp_path):
    folder = _outputs(storage, "beta")
    argv = ["beta", "--storage", str(storage), "--outputs", str(folder)]
    assert show_main([*argv, "--write", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    paths = [tmp_path / "o" / n for n in ("results.csv", "best.yaml", "best_vs_cost.png")]
    assert out.rstrip().endswith("wrote:\n" + "\n".join(f"  {p}" for p in paths))
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(p.name for p in paths)
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
    written, ran = (yaml.safe_load(p.read_text()) for p in (paths[1], folder / "best.yaml"))
    assert written == ran  # the best and the recommended sections, as the run wrote them
    records = _records(storage, "beta")
    assert paths[0].read_text().count("\n") == len(records) + 1


# ---------------------------------------------------------------------- eeipu best
def _override_value(text: str) -> dict:
    """The ``pipeline.fixed`` value of the override line in ``text``'s comments, as Hydra
    parses it (the line is shell-quoted)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    line = next(line for line in text.splitlines() if "++pipeline.fixed=" in line)
    (arg,) = shlex.split(line.lstrip("# "))
    override = OverridesParser.create().parse_overrides([arg])[0]
    assert override.key_or_group == "pipeline.fixed"
    return override.value()


@pytest.mark.parametrize("study", ["alpha", "beta"])
def test_best_prints_the_best_configuration_as_yaml_and_override(storage, capsys, study):
    assert best_main([study, "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    complete = [r for r in _records(storage, study) if r.complete]
    best = max(complete, key=lambda r: r.objective)
    assert yaml.safe_load(out) == best.params == _override_value(out)
    assert out.startswith(f"# study {study} (maximize): best observed configuration\n")
    assert f"# trial {best.number}, objective {best.objective:.6g}\n" in out


def test_best_recommended_is_what_the_study_wrote(storage, capsys):
    folder = _outputs(storage, "alpha")
    argv = ["alpha", "--storage", str(storage), "--outputs", str(folder), "--recommended"]
    assert best_main(argv) == 0
    out = capsys.readouterr().out
    recommended = yaml.safe_load((folder / "best.yaml").read_text())["recommended"]
    assert yaml.safe_load(out) == recommended["params"] == _override_value(out)
    assert f"# trial {recommended['trial']}, objective {recommended['objective']:.6g}\n" in out


def test_best_recommended_without_the_studys_best_yaml_is_one_line(storage, capsys, tmp_path):
    argv = ["alpha", "--storage", str(storage), "--recommended", "--outputs", str(tmp_path)]
    assert best_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"error: study 'alpha': no recommended configuration: no {tmp_path / 'best.yaml'} "
        "(the study's run writes it)\n"
    )


def test_best_is_an_eeipu_command(storage, capsys):
    from flows.cli import COMMANDS, main

    assert "best" in COMMANDS
    assert main(["best", "alpha", "--storage", str(storage)]) == 0
    assert capsys.readouterr().out.startswith("# study alpha (maximize)")


# ---------------------------------------------------------------------- answering at once
def test_inspection_commands_import_neither_torch_nor_prefect(storage):
    """`eeipu studies`, `show`, `best` and `cache` read a journal and a store: loading torch
    or Prefect would take seconds on a small machine (issue 29 item 5)."""
    script = f"""
import sys
from flows.cli import main
for argv in (["studies"], ["show", "alpha"], ["best", "alpha"], ["cache"]):
    assert main([*argv, "--storage", {str(storage)!r}]) == 0, argv
from stages import Store, StoreError
from flows import StudyJournal
heavy = sorted(m for m in ("torch", "prefect", "botorch", "eeipu", "matplotlib") if m in sys.modules)
assert not heavy, heavy
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=storage.parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_unknown_study_is_one_line_and_exit_2(storage, capsys):
    assert show_main(["nope", "--storage", str(storage)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: no study 'nope' in {storage}; known: alpha, beta\n"
    assert cache_main(["--storage", str(storage), "--study", "nope", "--max-bytes", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: no study 'nope'")


def test_unusable_storage_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    commands = ((studies_main, []), (show_main, ["a"]), (best_main, ["a"]), (cache_main, []))
    for command, args in commands:
        assert command(["--storage", str(tmp_path / "file"), *args]) == 2
        err = capsys.readouterr().err
        assert err == f"error: cannot use storage {tmp_path / 'file'}: it is a file, not a folder\n"
    assert studies_main(["--storage", "nope://x/y"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot use storage nope://x/y: ")


# ---------------------------------------------------------------------- eeipu cache
def _stage_sizes(store: Store) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for key, (size, _) in store.usage().items():
        stage = store.read_meta(key)["eeipu"].get("stage", "(no stage)")
        out.setdefault(stage, [0, 0])
        out[stage][0] += 1
        out[stage][1] += size
    return out


def test_cache_sizes_per_stage_add_up_to_the_payloads(storage, capsys):
    store = Store(storage)
    total = sum(size for size, _ in store.usage().values())
    assert cache_main(["--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cache {storage}: {len(store.usage())} entries, {human_bytes(total)}\n")
    rows = {
        stage: rest for stage, *rest in (" ".join(r).rsplit(None, 3) for r in _rows(out, "STAGE"))
    }
    expected = {s: [str(n), *human_bytes(b).split()] for s, (n, b) in _stage_sizes(store).items()}
    assert rows == {**expected, "total": [str(len(store.usage())), *human_bytes(total).split()]}
    assert set(expected) >= {"prep", "train", "finetune"}


def _planned(out: str) -> list[tuple[str, str, str, str]]:
    """(stage, short key, bytes, why) of each entry the dry run lists."""
    rows = _rows(out[out.index("dry run") :], "STAGE")
    pattern = re.compile(r"(.+?)\s+([0-9a-f]{12})\s+(\S+ \S+)\s+(.+)")
    return [pattern.fullmatch(" ".join(row)).groups() for row in rows]


def test_cache_max_bytes_lists_what_eviction_would_free_and_deletes_nothing(storage, capsys):
    store = Store(storage)
    before, keys = store.usage(), store.keys()
    total = sum(size for size, _ in before.values())
    cap = total // 2
    assert cache_main(["--storage", str(storage), "--max-bytes", str(cap)]) == 0
    planned = _planned(capsys.readouterr().out)
    assert planned, "nothing listed although the cache is over the cap"
    full = [next(k for k in before if k.startswith(row[1])) for row in planned]
    freed = sum(before[k][0] for k in full)
    assert freed >= total - cap and freed - before[full[-1]][0] < total - cap
    stages = [store.read_meta(k)["eeipu"].get("stage", "(no stage)") for k in full]
    assert [row[0] for row in planned] == stages
    # No study's entries first (Prefect's results of failed stages), then last stages, then
    # reusable prefixes.
    order = ["no study's trial", "last stage", "prefix,"]
    classes = [next(i for i, c in enumerate(order) if c in why) for *_, why in planned]
    assert classes == sorted(classes) and 1 in classes
    assert store.usage() == before and store.keys() == keys


def test_cache_with_study_uses_that_studys_eviction_order(storage, capsys):
    store = Store(storage)
    cap = sum(size for size, _ in store.usage().values()) // 3
    records = _records(storage, "alpha")
    value = reuse_value(records, "maximize")
    expected = store.evict(cap, value, dry_run=True)
    assert cache_main(["--storage", str(storage), "--max-bytes", str(cap), "--study", "alpha"]) == 0
    planned = _planned(capsys.readouterr().out)
    assert [row[1] for row in planned] == [k[:12] for k in expected]
    assert planned[0][3] == "not a trial of alpha"  # beta's entries go first


def test_cache_within_the_cap_evicts_nothing(storage, capsys):
    assert cache_main(["--storage", str(storage), "--max-bytes", "2GiB"]) == 0
    assert "--max-bytes 2GiB: " in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["lots", "0", "-5", "5 parsecs"])
def test_bad_max_bytes_is_one_line_and_exit_2(storage, capsys, bad):
    assert cache_main(["--storage", str(storage), "--max-bytes", bad]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"error: --max-bytes must be a positive size (bytes, or 500MB, 2GiB), but got {bad!r}\n"
    )


def test_cache_finds_the_versions_that_kwargs_set(tmp_path, capsys):
    # A pipeline built with kwargs (here version="2"; real ones: size, seed) has other stage
    # versions than its factory's defaults; journals written before records named their
    # stage keys (schema 0, as here) record neither the kwargs nor the keys.
    pipe = synthetic_pipeline(version="2")
    store = Store(tmp_path)
    header = {
        "study": "v2",
        "method": "random",
        "direction": "maximize",
        "pipeline": {"name": "synthetic", "target": "stages.testing.synthetic_pipeline"},
        "space": pipe.space_dict(),
        "budget": 10.0,
        "n_init": 1,
    }
    store.write_file("studies/v2/study.json", json.dumps(header).encode())
    records = []
    for i, x in enumerate((0.2, 0.5, 0.8)):
        params = {
            s: {p: spec["low"] + x * (spec["high"] - spec["low"]) for p, spec in sec.items()}
            for s, sec in pipe.space_dict().items()
        }
        costs = dict.fromkeys(pipe.stage_names, 1.0)
        raw = {"number": i, "state": "complete", "params": params, "objective": x, "costs": costs}
        store.write_file(f"studies/v2/trials/{i:06d}.json", json.dumps(raw).encode())
        records.append(
            TrialRecord.model_validate({**raw, "keys": pipe.keys(params), "sink": pipe.sink.name})
        )
        for stage, key in pipe.keys(params).items():
            store.write(key, bytes(100), {"stage": stage, "version": "2"})
    expected = store.evict(500, reuse_value(records, "maximize"), dry_run=True)
    assert cache_main(["--storage", str(tmp_path), "--max-bytes", "500"]) == 0
    planned = _planned(capsys.readouterr().out)
    assert [row[1] for row in planned] == [k[:12] for k in expected]
    assert [row[3] for row in planned[:3]] == ["last stage"] * 3
    assert planned[3][3] == "prefix, trial rank 0.33"  # the worst trial's prefix


# ---------------------------------------------------------------------- S3
def test_studies_and_cache_on_s3(prefect_harness, s3_bucket, tmp_path, capsys):
    url = f"s3://{s3_bucket}/cache"
    _run(url, "s3tiny", "storage=s3", "max_trials=2", out=tmp_path)
    assert studies_main(["--storage", url]) == 0
    rows = _rows(capsys.readouterr().out, "STUDY")
    assert [row[:5] for row in rows] == [["s3tiny", "eeipu", "synthetic", "2", "0"]]

    store = Store(url)
    before = store.usage()
    total = sum(size for size, _ in before.values())
    assert cache_main(["--storage", url, "--max-bytes", str(total - 1)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cache {url}: {len(before)} entries, {human_bytes(total)}\n")
    assert len(_planned(out)) >= 1
    assert Store(url).usage() == before

    assert studies_main(["--storage", f"s3://no-{s3_bucket}/x"]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
