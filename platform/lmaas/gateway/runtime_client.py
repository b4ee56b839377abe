"""The gateway's HTTP client to runtime replicas (the internal API of `lmaas.protocol`).

One `httpx.AsyncClient` for all replicas. Its transport is the test seam: pass any
``httpx.AsyncBaseTransport`` (one method, ``handle_async_request``) — e.g.
``httpx.MockTransport`` to play a failing replica — instead of monkeypatching. httpx's
errors are translated here: a replica that cannot be reached raises `ReplicaUnreachable`
(the request was not sent, another replica may take it), a refusal raises the gateway's
`ApiError` with the runtime's own message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from lmaas.gateway.errors import ApiError, BadGateway, NotFound, ServiceUnavailable
from lmaas.protocol import AdapterState, ErrorBody, GenerateEvent, GenerateRequest, RuntimeInfo

__all__ = ["GenerationStream", "ReplicaUnreachable", "RuntimeClient"]


class ReplicaUnreachable(Exception):
    """The replica did not accept the connection; nothing was sent."""


def _error_from(response: httpx.Response, body: bytes) -> ApiError:
    try:
        info = ErrorBody.model_validate_json(body).error
    except ValueError:
        return BadGateway(f"the model runtime answered {response.status_code} unexpectedly")
    if response.status_code >= 500:
        error: ApiError = (
            ServiceUnavailable(info.message, code=info.code, headers={"Retry-After": "2"})
            if response.status_code == 503
            else BadGateway(info.message, code=info.code)
        )
    elif response.status_code == 404:
        error = NotFound(info.message, code=info.code, param=info.param)
    else:
        error = ApiError(
            info.message, code=info.code, param=info.param, status=response.status_code
        )
    return error


class GenerationStream:
    """The events of one generation, read line by line from the runtime."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[GenerateEvent]:
        try:
            async for line in self._response.aiter_lines():
                if line.strip():
                    yield GenerateEvent.model_validate_json(line)
        except httpx.HTTPError as exc:
            raise BadGateway(f"the model runtime failed mid-stream ({type(exc).__name__})") from exc
        except (ValueError, json.JSONDecodeError) as exc:
            raise BadGateway("the model runtime sent a malformed event") from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class RuntimeClient:
    """Calls to runtime replicas by base URL."""

    def __init__(
        self, *, transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 600.0
    ) -> None:
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        try:
            return await self._http.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ReplicaUnreachable(str(request.url)) from exc
        except httpx.HTTPError as exc:
            raise BadGateway(f"the model runtime failed ({type(exc).__name__})") from exc

    async def _json(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        response = await self._send(self._http.build_request(method, url, **kwargs))  # type: ignore[arg-type]
        if response.status_code >= 400:
            raise _error_from(response, response.content)
        return response

    async def generate(self, base_url: str, request: GenerateRequest) -> GenerationStream:
        """Start a generation; raises the runtime's refusal before any event is read."""
        http_request = self._http.build_request(
            "POST",
            f"{base_url}/internal/generate",
            content=request.model_dump_json(exclude_none=True),
            headers={"content-type": "application/json"},
        )
        response = await self._send(http_request, stream=True)
        if response.status_code >= 400:
            body = await response.aread()
            await response.aclose()
            raise _error_from(response, body)
        return GenerationStream(response)

    async def info(self, base_url: str) -> RuntimeInfo:
        response = await self._json("GET", f"{base_url}/internal/info")
        return RuntimeInfo.model_validate_json(response.content)

    async def is_ready(self, base_url: str) -> bool:
        try:
            response = await self._send(self._http.build_request("GET", f"{base_url}/readyz"))
        except (ReplicaUnreachable, ApiError):
            return False
        return response.status_code == 200

    async def adapters(self, base_url: str) -> list[AdapterState]:
        response = await self._json("GET", f"{base_url}/internal/adapters")
        return [AdapterState.model_validate(a) for a in response.json()]

    async def unload_adapter(self, base_url: str, adapter_id: str) -> None:
        request = self._http.build_request("DELETE", f"{base_url}/internal/adapters/{adapter_id}")
        response = await self._send(request)
        if response.status_code >= 400 and response.status_code != 404:
            raise _error_from(response, response.content)

    async def aclose(self) -> None:
        await self._http.aclose()
