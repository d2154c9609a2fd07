"""``pipeline.stage_tags``: Prefect tags on stage task runs, for tag concurrency limits."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from flows import ConfigError, StudyConfig
from flows.conf import CONFIG_DIR


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    cfg = OmegaConf.to_container(cfg, resolve=False)
    cfg["output_dir"] = None
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)


@pytest.mark.slow
def test_stage_tags_reach_the_stage_tasks_under_a_concurrency_limit(prefect_harness, tmp_path):
    from prefect import get_client

    from flows.runtime import build_pipeline
    from stages import Store, run_pipeline, stage_task

    cfg = StudyConfig.from_mapping(
        composed("+pipeline.stage_tags={train: [gpu-test]}", f"storage.url={tmp_path}")
    )
    pipeline = build_pipeline(cfg)
    assert [s.tags for s in pipeline.stages] == [(), ("gpu-test",), ()]
    store = Store(tmp_path)
    assert stage_task(pipeline.stages[1], store).tags == {"gpu-test"}
    # Under a tag concurrency limit of 1 the tagged stage still runs (and frees its slot).
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="gpu-test", concurrency_limit=1)
        try:
            params = {
                s: {p: spec["low"] for p, spec in sec.items()}
                for s, sec in cfg.pipeline.space.items()
            }
            for _ in range(2):
                run_pipeline(pipeline, params, store)
            limit = client.read_concurrency_limit_by_tag("gpu-test")
            assert limit.active_slots == []
        finally:
            client.delete_concurrency_limit_by_tag("gpu-test")


def test_stage_tags_errors():
    from flows.runtime import build_pipeline

    with pytest.raises(ConfigError, match=r"`pipeline.stage_tags` must map stage -> list of tags"):
        StudyConfig.from_mapping(composed("+pipeline.stage_tags={train: gpu}"))
    cfg = StudyConfig.from_mapping(composed("+pipeline.stage_tags={nope: [gpu]}"))
    with pytest.raises(
        ConfigError, match=r"`pipeline.stage_tags` names unknown stage\(s\) \['nope'\]"
    ):
        build_pipeline(cfg)
