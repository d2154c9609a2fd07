"""The store on S3 (moto server on 127.0.0.1), across processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from stages import Store, StoreCacheView, run_pipeline
from stages.testing import synthetic_pipeline

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys
from stages import Store, StoreCacheView, run_pipeline
from stages.testing import synthetic_pipeline
url, params = sys.argv[1], json.loads(sys.argv[2])
pipe, store = synthetic_pipeline(), Store(url)
view = StoreCacheView(pipe, store)
result = run_pipeline(pipe, params, store)
print(json.dumps({
    "view": {s: view.is_cached(s, params) for s in pipe.stage_names},
    "cached": result.cached, "keys": result.keys, "objective": result.objective,
}))
"""


def _params(pipe):
    return {
        s: {x: (v["low"] + v["high"]) / 2 for x, v in sec.items()}
        for s, sec in pipe.space_dict().items()
    }


def test_s3_round_trip_and_hits_from_a_new_process(
    prefect_harness, s3_bucket, tmp_path, monkeypatch, caplog
):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    caplog.set_level(logging.DEBUG)
    monkeypatch.chdir(tmp_path)  # the default local store would land here
    local_storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())

    def _local_files() -> set[Path]:
        return set(local_storage.rglob("*")) if local_storage.exists() else set()

    local_before = _local_files()
    url = f"s3://{s3_bucket}/studies/one"
    pipe = synthetic_pipeline()
    params = _params(pipe)
    store = Store(url)

    first = run_pipeline(pipe, params, store)
    assert first.cached_stages == set()
    assert store.keys() == set(first.keys.values())
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    objects = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert objects == {
        f"studies/one/{area}/{name}"
        for k in first.keys.values()
        for area, name in (("meta", f"{k}.json"), ("data", store.payload_path(k).rsplit("/")[-1]))
    }

    child_home = tmp_path / "child-prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(child_home), "PREFECT_API_URL": prefect_harness}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, url, json.dumps(params)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["view"] == {s: True for s in pipe.stage_names}
    assert child["cached"] == {s: True for s in pipe.stage_names}
    assert child["keys"] == first.keys
    assert child["objective"] == pytest.approx(first.objective)

    # Nothing went to a local folder: no default store, no Prefect local result storage.
    assert not (tmp_path / ".eeipu").exists()
    child_storage = child_home / "storage"
    assert not child_storage.exists() or not any(child_storage.rglob("*"))
    # (Prefect may keep other tests' failure pickles there: compare with the start.)
    assert _local_files() == local_before
    # Credentials never show up in what either process printed or logged.
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret not in out.stdout + out.stderr
    assert secret not in caplog.text and secret not in repr(store)


def test_s3_listing_sees_writes_from_elsewhere(s3_bucket):
    url = f"s3://{s3_bucket}/listing"
    reader, writer = Store(url), Store(url, storage_options={"skip_instance_cache": True})
    pipe = synthetic_pipeline()
    params = _params(pipe)
    view = StoreCacheView(pipe, reader)
    assert not view.is_cached("prep", params)
    writer.write(pipe.key("prep", params), b"payload")
    # A stale listing cache would hide the new entry from the next view.
    assert StoreCacheView(pipe, reader).is_cached("prep", params)
    assert reader.exists(pipe.key("prep", params))
    assert reader.read(pipe.key("prep", params)) == b"payload"
