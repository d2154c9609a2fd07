"""Prefect flows and the Hydra entry point (``python -m flows.tune``)."""

from flows._config import ConfigError, PipelineConfig, StorageConfig, StudyConfig

__all__ = ["ConfigError", "PipelineConfig", "StorageConfig", "StudyConfig"]
