"""S3 credentials given through the environment never leave the process that holds them:
not in console output, outputs, the journal, cache sidecars, flow-run parameters, artifacts,
Prefect logs, saved blocks, the Prefect database, or error messages."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import boto3
import pytest

from tests.helpers import FAST, cli

KEY_ID = "AKIAEEIPUTESTKEY1234"
SECRET = "eeipu/Secret+Value/9f8e7d6c5b4a"
TOKEN = "eeipu-session-token-0a1b2c3d"


def _prefect_records() -> str:
    """Everything the Prefect server holds that a credential could leak into."""
    from prefect.client.orchestration import get_client

    async def dump() -> str:
        async with get_client() as client:
            runs = await client.read_flow_runs()
            artifacts = await client.read_artifacts()
            logs = await client.read_logs()
            blocks = await client.read_block_documents(include_secrets=True)
        parts = [r.model_dump_json() for r in runs]
        parts += [a.model_dump_json() for a in artifacts]
        parts += [entry.model_dump_json() for entry in logs]
        parts += [b.model_dump_json() for b in blocks]
        return "\n".join(parts)

    return asyncio.run(dump())


def _database_bytes() -> bytes:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = str(PREFECT_API_DATABASE_CONNECTION_URL.value() or "")
    path = Path(url.split("///", 1)[-1]) if "sqlite" in url else None
    if path is None or not path.exists():
        path = Path(os.environ["PREFECT_HOME"]) / "prefect.db"
    files = [p for p in path.parent.glob(path.name + "*") if p.is_file()]
    assert files, f"no Prefect database found at {path}"
    return b"".join(p.read_bytes() for p in files)


@pytest.mark.slow
def test_env_credentials_never_leak(prefect_harness, api_env, moto_endpoint, tmp_path):
    env = {
        **api_env,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    s3.create_bucket(Bucket="eeipu-creds")
    ok = cli(
        *FAST,
        "study=creds",
        "storage=s3",
        "storage.url=s3://eeipu-creds/c",
        "+pipeline.kwargs.fail_stage=train",
        "+pipeline.kwargs.fail_above=0.9",
        f"hydra.run.dir={tmp_path / 'out'}",
        env=env,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    bad = [
        cli("study=x", "storage=s3", "storage.url=s3://no-such-bucket-x/p", env=env, cwd=tmp_path),
        cli(
            "study=y",
            "storage=s3",
            "storage.url=s3://eeipu-creds/c",
            env={**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
            cwd=tmp_path,
        ),
    ]
    assert all(p.returncode == 2 for p in bad)

    haystacks = {
        "console": "".join(p.stdout + p.stderr for p in [ok, *bad]).encode(),
        "outputs": b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()),
        "bucket": b"".join(
            s3.get_object(Bucket="eeipu-creds", Key=o["Key"])["Body"].read()
            for o in s3.list_objects_v2(Bucket="eeipu-creds")["Contents"]
        ),
        "prefect api": _prefect_records().encode(),
        "prefect database": _database_bytes(),
    }
    assert b"studies/creds/trials/000000.json" in b"".join(
        o["Key"].encode() for o in s3.list_objects_v2(Bucket="eeipu-creds")["Contents"]
    )
    assert b"eeipu-study" in haystacks["prefect database"]  # the grep sees the real records
    for where, data in haystacks.items():
        for secret in (KEY_ID, SECRET, TOKEN):
            assert secret.encode() not in data, f"{secret!r} leaked into {where}"


def test_the_study_context_keeps_storage_options_secret(tmp_path):
    """The context holds the options its store was built with, and shows them nowhere: not
    in its repr, its dumps, nor what Prefect records of it as a flow parameter."""
    from fastapi.encoders import jsonable_encoder

    from flows import StudyConfig, StudyContext
    from tests.helpers import composed

    cfg = composed(f"storage.url={tmp_path / 'cache'}", "study=secret")
    cfg["storage"]["options"] = {"auto_mkdir": True, "token": SECRET}
    ctx = StudyContext.build(StudyConfig.from_mapping(cfg))
    assert ctx.credentials.get_secret_value()["token"] == SECRET
    assert ctx.store.fs.auto_mkdir  # the store was built with the options
    shown = [repr(ctx), str(ctx), ctx.model_dump_json(), str(jsonable_encoder(ctx))]
    shown += [str(ctx.config.model_dump()), repr(ctx.credentials)]
    assert not any(SECRET in text for text in shown)
    assert jsonable_encoder(ctx) == {"study": "secret", "storage": ctx.store.url}
