"""A journal written before records had a schema (tests/flows/data/README.md) still reads,
inspects and resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from flows import StudyJournal
from flows.inspection import best_trial, show_main
from flows.records import (
    OUTCOME_SCHEMA,
    RECORD_SCHEMA,
    PublishedOutcome,
    TrialOutcome,
    read_published,
    read_record,
    warmup_cost,
)
from stages import Store
from tests.helpers import OPTIMIZER_FAST, composed

OLD = Path(__file__).parent / "data" / "journal_v0"
STUDY = "old-journal"


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    url = tmp_path / "store"
    shutil.copytree(OLD, url)
    return url


def test_old_records_read_with_their_renamed_times_and_warmup(old_store):
    records = StudyJournal(Store(str(old_store)), STUDY).records()
    assert [r.number for r in records] == [0, 1, 2, 3, 4]
    assert [r.asked_as for r in records] == [0, 2, 1, 3, 4]
    assert all(r.schema_ == 0 for r in records)
    # `started_at` meant the ask, `finished_at` the tell: read under their names now.
    assert all(r.asked_at < r.submitted_at <= r.told_at for r in records)
    assert all(r.started_at is None and r.finished_at is None for r in records)
    # The warm-up (n_init=3: the trials asked first) ends once the third of them is told.
    assert [r.warmup for r in records] == [True, True, True, False, False]
    spent3 = sum(r.cost for r in records[:3])
    assert warmup_cost(records) == pytest.approx(spent3)


def test_a_record_read_and_written_again_is_the_current_schema(old_store):
    raw = (old_store / "studies" / STUDY / "trials" / "000001.json").read_text()
    record = read_record(yaml.safe_load(raw))
    again = read_record(record.to_json())
    assert again.schema_ == 0 and again == record  # the version it was written in is kept
    fresh = record.model_copy(update={"schema_": RECORD_SCHEMA})
    assert read_record(fresh.to_json()).told_at == record.told_at


def test_inspection_reads_an_old_journal(old_store, tmp_path, capsys):
    record, direction = best_trial(str(old_store), STUDY)
    assert (record.number, direction) == (0, "maximize")
    out_dir = tmp_path / "written"
    argv = [STUDY, "--storage", str(old_store), "--outputs", str(tmp_path), "--write", str(out_dir)]
    assert show_main(argv) == 0
    out = capsys.readouterr().out
    assert "5 trials (0 failed)" in out and "trial 0, objective -27.9374" in out
    written = yaml.safe_load((out_dir / "best.yaml").read_text())
    assert written["best"]["trial"] == 0 and written["trials"] == 5


def test_an_old_journal_resumes(prefect_harness, old_store, tmp_path):
    from flows.tune import run

    # The journal was written when the synthetic pipeline lived in stages.pipelines; a
    # study resumes only with the target it was started with, so point it at today's.
    header = old_store / "studies" / STUDY / "study.json"
    moved = "stages.pipelines.synthetic_pipeline", "stages.testing.synthetic_pipeline"
    assert moved[0] in header.read_text()
    header.write_text(header.read_text().replace(*moved))
    cfg = composed(
        *OPTIMIZER_FAST,
        "budget=32",
        "n_init=3",
        "seed=0",
        f"study={STUDY}",
        f"storage.url={old_store}",
        "progress=false",
    )
    cfg["output_dir"] = str(tmp_path / "out")
    result = run(cfg)
    records = StudyJournal(Store(str(old_store)), STUDY).records()
    assert result.n_trials == len(records) > 5
    assert [r.number for r in records] == list(range(len(records)))
    new = records[5:]
    assert all(r.schema_ == RECORD_SCHEMA and r.told_at is not None for r in new)
    assert all(r.sink == "finetune" and set(r.stage_keys) == set(r.versions) for r in new)
    assert all(r.warmup is False for r in new)
    assert all(r.warmup_spent == pytest.approx(records[2].warmup_spent) for r in new)


def test_an_outcome_published_before_schema_1_reads_with_its_renamed_times():
    old = b'{"number": 3, "flow_run_id": "r", "ran_from": 1.0, "ran_to": 2.5, "error": null, '
    old += b'"objective": 0.5, "costs": {"prep": 1.0}, "keys": {"prep": "k"}, "cached": []}'
    outcome = read_published(old)
    assert (outcome.started_at, outcome.finished_at) == (1.0, 2.5)
    assert outcome.stage_keys == {"prep": "k"} and outcome.objective == 0.5
    assert outcome.schema_ == 0 and read_published(outcome.to_json()) == outcome
    assert PublishedOutcome().schema_ == OUTCOME_SCHEMA


def test_a_non_finite_objective_is_a_failure_of_the_sink():
    outcome = TrialOutcome(objective=float("nan"), sink="train", costs={"train": 1.0}).checked()
    assert outcome.objective is None and outcome.stage == "train"
    assert outcome.error == outcome.reason == "objective is nan"
