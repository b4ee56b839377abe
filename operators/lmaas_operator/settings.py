"""Settings of the operator process, read once from ``LMAAS_OPERATOR_*`` environment variables.

The platform's own settings (database, broker) stay in `lmaas.config.Settings`; these are
the knobs that only the operator has: images and ports of the runtime pods it creates,
how often it re-checks its children and re-plans services from live traffic, and where the
gateway lives. `lmaas config-table` lists them in the README below the platform's own.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OperatorSettings", "get_operator_settings"]


class OperatorSettings(BaseSettings):
    """Configuration of the lmaas operator (environment variables ``LMAAS_OPERATOR_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="LMAAS_OPERATOR_", extra="ignore")

    runtime_image: str = Field(
        default="ghcr.io/lmaas/runtime:0.1.0",
        description="Image of the runtime pods the operator creates for a ModelService.",
    )
    runtime_port: int = Field(default=8001, description="Port the runtime listens on in its pod.")
    platform_namespace: str = Field(
        default="lmaas-system",
        description="Namespace of the gateway; tenant NetworkPolicies allow traffic to and from it.",
    )
    runtime_env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment of every runtime pod, as JSON (e.g. LMAAS_ARTIFACT_URL "
        "of the shared object store the adapters are read from).",
    )
    resync_interval_s: float = Field(
        default=60.0, description="How often every resource is re-checked and drift corrected."
    )
    finetune_poll_s: float = Field(
        default=10.0, description="How often a FineTuneJob's progress is copied from the database."
    )
    watch_timeout_s: float | None = Field(
        default=None,
        description="Client-side timeout of a watch request (then the operator re-lists); "
        "None = kopf's default.",
    )
    adapter_requests_per_replica: float = Field(
        default=2.0,
        description="Requests per second one replica should serve for an adapter before the "
        "adapter is loaded on one more replica.",
    )
    runtime_timeout_s: float = Field(
        default=30.0, description="Timeout of one call to a runtime pod's internal API."
    )
    replan_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="How often a ModelService planned by the planner (gpu.mode auto) is "
        "re-planned from the traffic the gateways saw since the last time (on the resync timer: "
        "at most once per resync interval); 0 = never.",
    )
    replan_headroom: float = Field(
        default=0.15,
        ge=0,
        description="Re-planning sizes for the observed request rate plus this fraction.",
    )
    replan_down_after_s: float = Field(
        default=300.0,
        ge=0,
        description="A cheaper plan for less traffic is adopted only after it has held this "
        "long (more traffic is followed at once).",
    )
    gateway_service: str = Field(
        default="lmaas-gateway",
        description="Name of the gateway's Service in the platform namespace: the live traffic "
        "is read from the /metrics of every pod behind it (its EndpointSlices).",
    )
    gateway_metrics_url: str | None = Field(
        default=None,
        description="Comma-separated /metrics URLs of the gateways to read the live traffic "
        "from, instead of the pods of `LMAAS_OPERATOR_GATEWAY_SERVICE`.",
    )


@lru_cache
def get_operator_settings() -> OperatorSettings:
    """The process-wide operator settings, read from the environment on first use."""
    return OperatorSettings()
