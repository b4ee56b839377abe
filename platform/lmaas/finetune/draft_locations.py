"""Where drafts and OSD records live in a deployment's artifact store (torch-free).

Shared by the runtime (records, polls, swaps) and the worker (builds, distils):

- `LMAAS_DRAFT_URL`, default `<artifacts>/drafts/<model>` (`v0001, …, LATEST`) — the
  model's shared draft, built offline by `lmaas.speculation.build_draft`; what a runtime
  serving many tenants runs;
- `<artifacts>/tenant-drafts/<tenant>/<model>/…` — a tenant's own lineage, started from
  the shared draft by its first OSD round and refined by every later one; what a runtime
  dedicated to that tenant (`LMAAS_DRAFT_TENANT`) runs as soon as it exists;
- `<artifacts>/osd/<tenant>/<model>/*.jsonl` — what runtimes recorded (`OSDRecorder`).

Tenant and model names that are not plain path components are replaced by a digest
(`osd_folder`), so no name can leave its folder.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmaas.config import Settings
from lmaas.engine.speculation.osd_buffer import osd_folder

__all__ = ["DraftLocations"]


@dataclass(frozen=True)
class DraftLocations:
    """The draft and OSD folders (fsspec URLs) of one deployment."""

    artifacts: str
    draft_urls: tuple[tuple[str, str], ...] = ()  # (model, shared draft root) set explicitly

    @classmethod
    def from_settings(cls, settings: Settings) -> DraftLocations:
        return cls(
            settings.resolved_artifact_url.rstrip("/"),
            ((settings.model_name, settings.resolved_draft_url.rstrip("/")),),
        )

    @property
    def osd(self) -> str:
        """The root `OSDRecorder` writes under and `run_osd_round` reads from."""
        return f"{self.artifacts}/osd"

    def shared_drafts(self, model: str) -> str:
        """The versions of `model`'s shared draft."""
        return dict(self.draft_urls).get(model) or f"{self.artifacts}/drafts/{model}"

    def tenant_drafts(self, tenant_id: str, model: str) -> str:
        """The versions of `tenant_id`'s own draft of `model`."""
        return osd_folder(f"{self.artifacts}/tenant-drafts", tenant_id, model)

    def serving_drafts(self, model: str, tenant_id: str | None) -> list[str]:
        """The roots a runtime takes its draft from, the first with a version winning."""
        shared = self.shared_drafts(model)
        return [self.tenant_drafts(tenant_id, model), shared] if tenant_id else [shared]
