"""The gateway: tenant API (OpenAI-compatible), admin API, quotas, usage and routing."""

from lmaas.gateway.app import create_app

__all__ = ["create_app"]
