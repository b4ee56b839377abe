"""The custom resources of lmaas: pydantic spec and status models, one pair per kind.

Handlers parse specs with these models and the CRDs' schemas are generated from them
(`lmaas_operator.crds`), so a field is declared once. Field docstrings are the descriptions
that `kubectl explain` shows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmaas_operator.schema import CrdModel

__all__ = [
    "AdapterPlacement",
    "AdapterSpec",
    "AdapterStatus",
    "Condition",
    "FineTuneEvent",
    "FineTuneHyperparameters",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "FineTuneOutput",
    "GPUChoice",
    "GPUTypeSpec",
    "GPUTypeStatus",
    "ModelServiceSpec",
    "ModelServiceStatus",
    "ModelSpec",
    "ModelStatus",
    "PlanStatus",
    "ReplicaStatus",
    "RuntimeOverrides",
    "ScalingSpec",
    "SloSpec",
    "SpeculationSpec",
    "SpotCapacity",
    "TenantQuotas",
    "TenantSpec",
    "TenantStatus",
    "Toleration",
    "WorkloadBucket",
    "WorkloadSpec",
]


# Shared pieces ---------------------------------------------------------------------


class Condition(CrdModel):
    """The state of one aspect of the resource, as in every Kubernetes object."""

    type: str
    """Kind of condition: Ready, Planned, Registered, Placed, Submitted."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = ""
    """One CamelCase word saying why."""
    message: str = ""
    """A sentence for a person: what is wrong and how to fix it."""
    last_transition_time: str | None = None
    """When `status` last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The `metadata.generation` the condition was computed from."""


class _Status(CrdModel):
    conditions: list[Condition] = Field(default_factory=list)
    """Current conditions; `Ready` summarises the resource."""
    observed_generation: int | None = None
    """The `metadata.generation` the operator last reconciled."""


class Toleration(CrdModel):
    """A pod toleration (as in a Pod spec) for the taints of the GPU nodes."""

    key: str | None = None
    """Taint key to tolerate; empty with operator Exists tolerates every taint."""
    operator: Literal["Equal", "Exists"] = "Equal"
    """How `value` is compared."""
    value: str | None = None
    """Taint value to match (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches every effect."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


# Tenant ----------------------------------------------------------------------------


class TenantQuotas(CrdModel):
    """Limits of one tenant, enforced by the gateway (requests, tokens) and Kubernetes (pods)."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    """Requests per minute over all keys; empty = the platform default."""
    tokens_per_minute: int | None = Field(default=None, ge=1)
    """Tokens (prompt + completion) per minute; empty = the platform default."""
    max_adapters: int | None = Field(default=None, ge=1)
    """Adapters stored at once; empty = the platform default."""
    max_concurrent_jobs: int | None = Field(default=None, ge=1)
    """Fine-tune jobs queued or running at once; empty = the platform default."""
    gpus: int = Field(default=8, ge=0)
    """GPUs the tenant's namespace may request in total (ResourceQuota)."""
    pods: int = Field(default=50, ge=1)
    """Pods the tenant's namespace may run (ResourceQuota)."""
    cpu: str = "64"
    """CPU the tenant's namespace may request in total, e.g. `64` or `500m`."""
    memory: str = "512Gi"
    """Memory the tenant's namespace may request in total, e.g. `512Gi`."""


class TenantSpec(CrdModel):
    """A tenant of the platform: its quotas, tier and the base models it may use."""

    display_name: str | None = None
    """Human-readable name shown in dashboards."""
    namespace: str | None = Field(default=None, max_length=63)
    """Namespace created for the tenant; default `tenant-<name>`."""
    tier: Literal["free", "standard", "enterprise"] = "standard"
    """Service tier (priority of its requests when GPUs are short)."""
    quotas: TenantQuotas = Field(default_factory=TenantQuotas)
    """Request, token, adapter, job and resource limits."""
    allowed_models: list[str] = Field(default_factory=list)
    """Names of the Models the tenant may use; empty = all."""
    egress_cidrs: list[str] = Field(default_factory=list)
    """Extra CIDRs the tenant's pods may reach (e.g. the object store holding weights)."""


class TenantStatus(_Status):
    """What the operator made for the tenant."""

    namespace: str | None = None
    """The tenant's namespace."""
    tenant_id: str | None = None
    """Id of the tenant in the platform database."""
    api_key_secret: str | None = None
    """Secret (in the tenant's namespace) holding the tenant's first API key under `api-key`."""


# Model -----------------------------------------------------------------------------


class ModelSpec(CrdModel):
    """A base model that services can serve, with the shape the GPU planner needs."""

    source: str = Field(min_length=1)
    """Where the weights are: a path or fsspec URL of a safetensors folder or a GGUF file."""
    architecture: str = "llama"
    """Model family (transformers architecture)."""
    num_params: int = Field(ge=1)
    """Number of parameters."""
    num_layers: int = Field(ge=1)
    """Number of transformer layers."""
    hidden_size: int = Field(ge=1)
    """Width of the residual stream."""
    num_kv_heads: int = Field(ge=1)
    """Number of key/value heads (grouped-query attention)."""
    head_dim: int = Field(ge=1)
    """Dimension of one attention head."""
    bytes_per_param: int = Field(default=2, ge=1, le=4)
    """Bytes per weight when served (2 = bf16/fp16)."""
    context_length: int = Field(default=2048, ge=1)
    """Longest sequence served."""


class ModelStatus(_Status):
    """Registration of the model in the platform database."""


# GPUType ---------------------------------------------------------------------------


class SpotCapacity(CrdModel):
    """Where spot (preemptible) nodes of this GPU type are and how to reach them."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels of the spot nodes."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations for the spot nodes' taints."""


class GPUTypeSpec(CrdModel):
    """An accelerator type: its capacity, price, and how pods land on its nodes."""

    memory_gib: float = Field(gt=0)
    """Memory of one GPU (GiB)."""
    price_per_hour: float = Field(ge=0)
    """On-demand price of one GPU per hour."""
    spot_price_per_hour: float | None = Field(default=None, ge=0)
    """Spot price of one GPU per hour; empty = no spot capacity."""
    max_count: int | None = Field(default=None, ge=0)
    """Most GPUs of this type the planner may use; empty = no limit."""
    bf16_tflops: float = Field(gt=0)
    """Dense bf16 throughput (TFLOP/s)."""
    mem_bandwidth_gbps: float = Field(gt=0)
    """Memory bandwidth (GB/s)."""
    resource_name: str = "nvidia.com/gpu"
    """Extended resource the device plugin advertises; empty = CPU nodes (tests, kind)."""
    gpus_per_replica: int = Field(default=1, ge=1)
    """GPUs one runtime replica uses."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels of the nodes with this GPU."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations for the taints of those nodes."""
    spot: SpotCapacity | None = None
    """Spot nodes of this type, if any."""


class GPUTypeStatus(_Status):
    """Validation of the GPU type."""


# ModelService ----------------------------------------------------------------------


class SloSpec(CrdModel):
    """The latency objective each replica must meet."""

    metric: Literal["tpot", "ttft"] = "tpot"
    """tpot = time per output token, ttft = time to first token."""
    statistic: Literal["mean", "p99"] = "mean"
    """Which statistic of the metric the target bounds."""
    target_ms: float = Field(gt=0)
    """The bound, in milliseconds."""


class WorkloadBucket(CrdModel):
    """A share of the requests whose sizes fall in given ranges."""

    input_tokens: list[int] = Field(min_length=2, max_length=2)
    """[low, high] prompt length in tokens."""
    output_tokens: list[int] = Field(min_length=2, max_length=2)
    """[low, high] completion length in tokens."""
    share: float = Field(gt=0, le=1)
    """Fraction of the requests in this bucket."""


class WorkloadSpec(CrdModel):
    """The expected traffic the planner sizes the service for."""

    rate: float = Field(default=1.0, ge=0)
    """Requests per second."""
    buckets: list[WorkloadBucket] = Field(default_factory=list)
    """Request size distribution; empty = one bucket of short chats."""


class ScalingSpec(CrdModel):
    """How many replicas may run."""

    min_replicas: int = Field(default=0, ge=0)
    """Replicas kept when idle; 0 = serverless (scaled from zero by the gateway)."""
    max_replicas: int | None = Field(default=None, ge=1)
    """Most replicas over all GPU types; empty = what the plan says."""
    idle_timeout_seconds: int = Field(default=300, ge=1)
    """A serverless service idle this long is scaled to zero."""
    max_spot_share: float = Field(default=0.0, ge=0, le=1)
    """Largest share of replicas the planner may put on spot capacity."""


class GPUChoice(CrdModel):
    """Which GPUs to run on: chosen by the planner (auto) or given (explicit)."""

    mode: Literal["auto", "explicit"] = "auto"
    """auto = the planner picks the cheapest mix meeting the SLO; explicit = use `counts`."""
    types: list[str] = Field(default_factory=list)
    """GPUType names the planner may use; empty = all GPUTypes."""
    counts: dict[str, int] = Field(default_factory=dict)
    """Replicas per GPUType name (mode explicit)."""


class SpeculationSpec(CrdModel):
    """Speculative decoding policy of the runtime."""

    policy: Literal["off", "fixed", "smartspec"] = "smartspec"
    """off, fixed (always `numSpeculativeTokens`) or smartspec (goodput-driven)."""
    num_speculative_tokens: int = Field(default=4, ge=1, le=16)
    """Proposal length for `fixed`, the upper bound for `smartspec`."""


class RuntimeOverrides(CrdModel):
    """Per-service overrides of the runtime pods."""

    image: str | None = None
    """Runtime image; empty = the operator's default."""
    cpu: str = "2"
    """CPU request of one replica."""
    memory: str = "16Gi"
    """Memory request of one replica."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables (LMAAS_* settings) of the runtime."""


class ModelServiceSpec(CrdModel):
    """Serve a Model (with adapters) under an SLO on the cheapest GPU mix."""

    model: str = Field(min_length=1)
    """Name of the Model to serve."""
    slo: SloSpec
    """Latency objective."""
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    """Expected traffic."""
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    """Replica bounds; minReplicas 0 = serverless."""
    gpu: GPUChoice = Field(default_factory=GPUChoice)
    """GPU choice."""
    speculation: SpeculationSpec = Field(default_factory=SpeculationSpec)
    """Speculative decoding."""
    runtime: RuntimeOverrides = Field(default_factory=RuntimeOverrides)
    """Runtime pod overrides."""


class PlanStatus(CrdModel):
    """The GPU mix in force."""

    counts: dict[str, int] = Field(default_factory=dict)
    """On-demand replicas per GPU type."""
    spot_counts: dict[str, int] = Field(default_factory=dict)
    """Spot replicas per GPU type."""
    cost_per_hour: float = 0.0
    """Price of the mix per hour."""
    buckets_by_type: dict[str, list[str]] = Field(default_factory=dict)
    """Which workload buckets each GPU type serves."""
    savings_vs_best_single: float | None = None
    """Fraction saved against the cheapest single-type mix."""
    source: Literal["planner", "live", "explicit"] = "planner"
    """planner = for the spec's workload; live = for the traffic the gateways saw; explicit = the spec's counts."""
    rate: float | None = None
    """Requests per second the mix was planned for (observed rate plus headroom when live)."""


class ReplicaStatus(CrdModel):
    """Replicas of one Deployment (one GPU type, on-demand or spot)."""

    deployment: str
    """Name of the Deployment."""
    gpu_type: str
    """GPUType name."""
    spot: bool = False
    """Whether it runs on spot capacity."""
    planned: int = 0
    """Replicas the plan wants when the service is busy."""
    desired: int = 0
    """Replicas asked of the Deployment now."""
    ready: int = 0
    """Replicas ready."""


class ModelServiceStatus(_Status):
    """The plan, the replicas and where to send requests."""

    plan: PlanStatus | None = None
    """The GPU mix in force."""
    replicas: list[ReplicaStatus] = Field(default_factory=list)
    """One entry per Deployment."""
    total_replicas: int = 0
    """Replicas asked of all Deployments now."""
    cost_per_hour: float = 0.0
    """Price per hour of the replicas running now."""
    endpoint: str | None = None
    """In-cluster URL of the runtime Service."""
    serverless: bool = False
    """Whether the service scales to zero."""
    plan_hash: str | None = None
    """Hash of the planner's inputs the plan was computed from."""
    observed_rate: float | None = None
    """Requests per second the gateways routed to the service in the last re-planning window."""


# Adapter ---------------------------------------------------------------------------


class AdapterPlacement(CrdModel):
    """On how many replicas the adapter is kept loaded."""

    min_replicas: int = Field(default=1, ge=0)
    """Replicas holding the adapter even without traffic."""
    max_replicas: int | None = Field(default=None, ge=1)
    """Most replicas holding it; empty = all."""
    requests_per_replica: float | None = Field(default=None, gt=0)
    """Requests per second one replica serves for it; empty = the operator's default."""


class AdapterSpec(CrdModel):
    """A tenant's LoRA adapter over the Model of a ModelService."""

    service: str = Field(min_length=1)
    """ModelService (same namespace) that serves the adapter."""
    adapter_name: str | None = Field(default=None, max_length=200)
    """Name requests use for it (the `model` field); default the resource's name."""
    source: str = Field(min_length=1)
    """Where the adapter is: a path or fsspec URL of a PEFT adapter folder."""
    rank: int = Field(default=8, ge=1, le=256)
    """LoRA rank."""
    alpha: float = Field(default=16.0, gt=0)
    """LoRA alpha."""
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    """Linear layers the adapter modifies."""
    placement: AdapterPlacement = Field(default_factory=AdapterPlacement)
    """How widely it is loaded."""


class AdapterStatus(_Status):
    """Where the adapter is registered and loaded."""

    adapter_id: str | None = None
    """Id in the platform database (what requests name)."""
    tenant_id: str | None = None
    """Owning tenant's id."""
    request_rate: float = 0.0
    """Requests per second seen by the gateway (annotation `lmaas.io/request-rate`)."""
    replicas: int = 0
    """Replicas it should be loaded on (k)."""
    loaded_on: list[str] = Field(default_factory=list)
    """Runtime pods that hold it."""


# FineTuneJob -----------------------------------------------------------------------


class FineTuneHyperparameters(CrdModel):
    """Training hyperparameters."""

    epochs: int = Field(default=3, ge=1, le=100)
    """Passes over the training file."""
    learning_rate: float | None = Field(default=None, gt=0)
    """Peak learning rate; empty = the method's default."""
    batch_size: int = Field(default=8, ge=1)
    """Examples per optimizer step."""
    lora_rank: int = Field(default=8, ge=1, le=256)
    """LoRA rank (method lora)."""
    lora_alpha: float = Field(default=16.0, gt=0)
    """LoRA alpha (method lora)."""


class FineTuneOutput(CrdModel):
    """What a succeeded job produces in Kubernetes."""

    adapter_name: str | None = None
    """Name of the Adapter created by a succeeded LoRA job; default the job's name."""
    service: str | None = None
    """ModelService the created Adapter is served by; empty = create no Adapter."""


class FineTuneJobSpec(CrdModel):
    """Fine-tune a Model on a tenant's uploaded training file."""

    method: Literal["lora", "qft"] = "lora"
    """lora = train an adapter; qft = quantized full-parameter fine-tune."""
    model: str = Field(min_length=1)
    """Base model name."""
    training_file: str = Field(min_length=1)
    """Id of an uploaded file (purpose fine-tune) of the tenant."""
    validation_file: str | None = None
    """Id of an uploaded validation file."""
    hyperparameters: FineTuneHyperparameters = Field(default_factory=FineTuneHyperparameters)
    """Training hyperparameters."""
    suffix: str | None = Field(default=None, max_length=40)
    """Added to the fine-tuned model's name."""
    output: FineTuneOutput = Field(default_factory=FineTuneOutput)
    """Adapter to create when it succeeds."""


class FineTuneEvent(CrdModel):
    """A line of the job's log."""

    time: str
    """When it happened (RFC 3339)."""
    level: str = "info"
    """info, warning or error."""
    message: str
    """What happened."""


class FineTuneJobStatus(_Status):
    """Progress of the job, copied from the platform database."""

    job_id: str | None = None
    """Id of the job in the platform database."""
    phase: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None
    """Where the job is."""
    step: int = 0
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps planned."""
    progress: str | None = None
    """step/totalSteps, for `kubectl get`."""
    fine_tuned_model: str | None = None
    """Name of the produced model or adapter."""
    adapter: str | None = None
    """Adapter resource created from the result."""
    error: str | None = None
    """Why the job failed."""
    events: list[FineTuneEvent] = Field(default_factory=list)
    """The newest log lines."""
