"""The reference engine: transformers + peft, one request at a time on one worker thread.

It is the numerical oracle and the first engine the runtime drives: simple, exact, slow.
Every request runs to completion on a single worker thread (so the model, its LoRA layers
and peft's active-adapter switch are never touched concurrently); requests queue in order.
Adapters are peft adapters loaded by name into one `PeftModel`; a request selects its
adapter with `set_adapter`, or runs on the base model with `disable_adapter`.

Validation happens before the first event: an unknown adapter, prompt + max_tokens over the
context, bad token ids, an empty prompt raise `EngineRequestError`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lmaas.adapters import AdapterError, parse_adapter, validate_adapter
from lmaas.engine.interface import EngineRequestError, EngineStats, InferenceEngine
from lmaas.protocol import (
    AdapterState,
    ErrorInfo,
    GenerateEvent,
    GenerateRequest,
    LoraTarget,
    RuntimeInfo,
    SamplingParams,
    Usage,
)

__all__ = ["ReferenceEngine", "resolve_device", "resolve_dtype", "sample_token"]

log = logging.getLogger(__name__)

_DONE = object()
_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that supports it, float16 on another GPU, float32 on CPU.

    On CPU the reference engine stays in float32: without AMX, bfloat16 matmuls are not
    faster here, and float32 keeps it an exact oracle.
    """
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def sample_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """Pick the next token from 1-D `logits` (temperature, top-k, top-p; 0 = greedy)."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = cumulative - sorted_probs > params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class _StopMatcher:
    """Finds stop strings in the growing output and holds back text that may start one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]

    def cut(self, text: str) -> int | None:
        """Index where the earliest stop string starts in `text`, or None."""
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def safe_length(self, text: str) -> int:
        """How much of `text` can be sent without possibly splitting a stop string."""
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        return len(text) - hold


class ReferenceEngine(InferenceEngine):
    """Serves the Hugging Face model folder `model_dir` with peft adapters."""

    def __init__(
        self,
        model_dir: Path,
        *,
        model_name: str,
        device: str = "auto",
        dtype: str = "auto",
        max_lora_rank: int = 64,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_name = model_name
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_lora_rank = max_lora_rank
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype)
        self._model = model.to(self.device).eval()
        self._peft: Any = None  # peft.PeftModel once an adapter is loaded
        self._info = self._describe()
        self._eos_ids = self._eos_token_ids()
        self._adapters: dict[str, AdapterState] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference-engine")
        self._lock = threading.Lock()
        self._num_waiting = 0
        self._num_running = 0
        self._cancels: set[threading.Event] = set()

    # Description ---------------------------------------------------------------------

    def _describe(self) -> RuntimeInfo:
        config = self._model.config
        first_layer = self._model.model.layers[0]
        targets = {
            name.rsplit(".", 1)[-1]: LoraTarget(
                in_features=module.in_features, out_features=module.out_features
            )
            for name, module in first_layer.named_modules()
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in _LORA_TARGETS
        }
        return RuntimeInfo(
            model=self.model_name,
            architecture=getattr(config, "model_type", "llama"),
            max_context=int(config.max_position_embeddings),
            vocab_size=int(config.vocab_size),
            num_layers=int(config.num_hidden_layers),
            dtype=str(self.dtype).removeprefix("torch."),
            device=str(self.device),
            engine="reference",
            lora_targets=targets,
            max_lora_rank=self.max_lora_rank,
        )

    def _eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self._model.generation_config, self._model.config):
            eos = getattr(source, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, list):
                ids.update(int(i) for i in eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    def info(self) -> RuntimeInfo:
        return self._info

    def adapters(self) -> list[AdapterState]:
        return list(self._adapters.values())

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                num_waiting=self._num_waiting,
                num_running=self._num_running,
                num_adapters=len(self._adapters),
            )

    # Requests ------------------------------------------------------------------------

    def _prompt_ids(self, request: GenerateRequest) -> list[int]:
        given = [
            x is not None for x in (request.prompt, request.messages, request.prompt_token_ids)
        ]
        if sum(given) != 1:
            raise EngineRequestError(
                "give exactly one of prompt, messages or prompt_token_ids", param="prompt"
            )
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            bad = [i for i in ids if not 0 <= i < self._info.vocab_size]
            if bad:
                raise EngineRequestError(
                    f"token id {bad[0]} is outside the vocabulary (0..{self._info.vocab_size - 1})",
                    param="prompt",
                )
        elif request.messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise EngineRequestError(
                    f"{self.model_name} has no chat template: use /v1/completions with a prompt",
                    param="messages",
                )
            text = self.tokenizer.apply_chat_template(
                [m.model_dump() for m in request.messages],
                add_generation_prompt=True,
                tokenize=False,
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(request.prompt)["input_ids"]
        if not ids:
            raise EngineRequestError("the prompt is empty", param="prompt")
        return ids

    def _max_new_tokens(self, request: GenerateRequest, num_prompt: int) -> int:
        context = self._info.max_context
        wanted = request.sampling.max_tokens
        if num_prompt >= context or (wanted is not None and num_prompt + wanted > context):
            raise EngineRequestError(
                f"this model's maximum context length is {context} tokens; the prompt has "
                f"{num_prompt} tokens and max_tokens asks for {wanted or 'at least 1'} more: "
                "shorten the prompt or lower max_tokens",
                code="context_length_exceeded",
                param="max_tokens" if wanted and num_prompt < context else "messages",
            )
        return wanted if wanted is not None else context - num_prompt

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateEvent]:
        prompt_ids = self._prompt_ids(request)
        max_new = self._max_new_tokens(request, len(prompt_ids))
        if request.adapter_id is not None and request.adapter_id not in self._adapters:
            raise EngineRequestError(
                f"adapter {request.adapter_id!r} is not loaded",
                code="adapter_not_found",
                param="model",
                status=404,
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        with self._lock:
            self._num_waiting += 1
            self._cancels.add(cancel)
        loop.run_in_executor(self._executor, self._run, request, prompt_ids, max_new, emit, cancel)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()

    def _run(
        self,
        request: GenerateRequest,
        prompt_ids: list[int],
        max_new: int,
        emit: Callable[[Any], None],
        cancel: threading.Event,
    ) -> None:
        with self._lock:
            self._num_waiting -= 1
            self._num_running += 1
        try:
            if not cancel.is_set():
                for event in self._decode(request, prompt_ids, max_new, cancel):
                    emit(event)
        except BaseException as exc:  # surfaced to the caller's iteration
            log.exception("request %s failed", request.request_id)
            emit(exc)
        finally:
            with self._lock:
                self._num_running -= 1
                self._cancels.discard(cancel)
            emit(_DONE)

    @contextmanager
    def _adapter_scope(self, adapter_id: str | None) -> Iterator[Any]:
        """The model to call, with `adapter_id` active (None = the base model alone)."""
        if self._peft is None:
            yield self._model
        elif adapter_id is None:
            with self._peft.disable_adapter():
                yield self._peft
        else:
            self._peft.set_adapter(adapter_id)
            yield self._peft

    def _decode(
        self,
        request: GenerateRequest,
        prompt_ids: list[int],
        max_new: int,
        cancel: threading.Event,
    ) -> Iterator[GenerateEvent]:
        params = request.sampling
        if request.adapter_id is not None and request.adapter_id not in self._adapters:
            yield GenerateEvent(
                finish_reason="error",
                usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=0),
                error=ErrorInfo(
                    message=f"adapter {request.adapter_id!r} was unloaded before the request ran",
                    code="adapter_not_found",
                ),
            )
            return
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self._eos_ids)
        stops = _StopMatcher(params.stop)
        output_ids: list[int] = []  # tokens whose text is part of the output
        sent = 0  # characters of the output text already emitted
        num_generated = 0
        with torch.inference_mode(), self._adapter_scope(request.adapter_id) as model:
            inputs = torch.tensor([prompt_ids], device=self.device)
            past = None
            while True:
                if cancel.is_set():
                    return
                out = model(input_ids=inputs, cache=past, use_cache=True)
                past = out.cache
                token = sample_token(out.logits[0, -1], params, generator)
                num_generated += 1
                finish = None
                if token in stop_ids:
                    finish = "stop"
                else:
                    output_ids.append(token)
                text = self.tokenizer.decode(output_ids, skip_special_tokens=True)
                cut = stops.cut(text)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                if finish is None and num_generated >= max_new:
                    finish = "length"
                if finish is None:
                    end = stops.safe_length(text)
                    if text[:end].endswith("\ufffd"):  # an incomplete UTF-8 sequence
                        end = len(text[:end].rstrip("\ufffd"))
                else:
                    end = len(text)
                usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=num_generated)
                yield GenerateEvent(
                    text=text[sent:end] if end > sent else "",
                    token_ids=[token],
                    finish_reason=finish,
                    usage=usage,
                )
                sent = max(sent, end)
                if finish is not None:
                    return
                inputs = torch.tensor([[token]], device=self.device)

    # Adapters ------------------------------------------------------------------------

    async def load_adapter(self, adapter_id: str, path: Path, *, pin: bool = False) -> AdapterState:
        try:
            spec = parse_adapter(path)
            validate_adapter(spec, self._info, max_rank=self.max_lora_rank)
        except AdapterError as exc:
            raise EngineRequestError(exc.message, code=exc.code, param="adapter") from exc
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load, adapter_id, path)
        state = AdapterState(adapter_id=adapter_id, rank=spec.rank, location="device", pinned=pin)
        self._adapters[adapter_id] = state
        return state

    def _load(self, adapter_id: str, path: Path) -> None:
        from peft import PeftModel

        if adapter_id in self._adapters:
            self._unload(adapter_id)
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(
                self._model, str(path), adapter_name=adapter_id, is_trainable=False
            )
        else:
            active = list(self._peft.active_adapters)
            try:
                self._peft.load_adapter(str(path), adapter_name=adapter_id, is_trainable=False)
            except BaseException:
                # Leave the model as it was: no half-injected adapter, the same active one.
                if adapter_id in self._peft.peft_config:
                    self._peft.set_adapter(active[0])
                    self._peft.delete_adapter(adapter_id)
                raise
        self._peft.to(self.device)
        self._peft.eval()

    async def unload_adapter(self, adapter_id: str) -> None:
        if adapter_id not in self._adapters:
            raise EngineRequestError(
                f"adapter {adapter_id!r} is not loaded", code="adapter_not_found", status=404
            )
        del self._adapters[adapter_id]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._unload, adapter_id)

    def _unload(self, adapter_id: str) -> None:
        if self._peft is None or adapter_id not in self._peft.peft_config:
            return
        if len(self._peft.peft_config) == 1:
            # peft cannot run with zero adapters: take the LoRA layers out altogether.
            self._model = self._peft.unload()
            self._peft = None
        else:
            if adapter_id in self._peft.active_adapters:  # switch first: peft warns otherwise
                self._peft.set_adapter(next(a for a in self._peft.peft_config if a != adapter_id))
            self._peft.delete_adapter(adapter_id)

    # Lifecycle -----------------------------------------------------------------------

    async def shutdown(self) -> None:
        with self._lock:
            for cancel in self._cancels:
                cancel.set()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
