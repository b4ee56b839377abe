"""The synchronous engine: requests in, one step at a time, events out.

`step` is the whole loop body — propose drafts (speculative decoding, `speculator`),
schedule, load adapters the scheduler placed, run the model, sample (or verify drafts in
one batched call), post-process (detokenize, stop, free what finished). A failure of the
forward pass fails the requests of that batch with an error event; the engine keeps
serving the others.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch

from lmaas.engine.block_manager import BlockManager
from lmaas.engine.engine_config import EngineConfig
from lmaas.engine.fair_share import VirtualTokenCounter
from lmaas.engine.forward_batch import ForwardBatch
from lmaas.engine.input_processor import InputProcessor
from lmaas.engine.interface import EngineRequestError, EngineStats
from lmaas.engine.lora.adapter import AdapterError, LoraAdapter
from lmaas.engine.lora.slot_table import SlotTable
from lmaas.engine.model_runner import ModelRunner
from lmaas.engine.output_processor import OutputProcessor, RequestState
from lmaas.engine.sampler import Sampler
from lmaas.engine.scheduler import Scheduler
from lmaas.engine.sequence import Sequence
from lmaas.engine.speculation.osd_buffer import OSDRecorder
from lmaas.engine.speculation.policy import MAX_FIXED_K, SpecPolicyError, parse_policy
from lmaas.engine.speculation.proposer import Proposer
from lmaas.engine.speculator import Speculator, VerifyEntry, create_speculator, draft_proposer
from lmaas.engine.tokenizer import Tokenizer
from lmaas.protocol import GenerateEvent, GenerateRequest

__all__ = ["LLMEngine", "StepEvents"]

log = logging.getLogger(__name__)

StepEvents = list[tuple[str, GenerateEvent]]


class LLMEngine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        speculator: Speculator | None = None,
        osd: OSDRecorder | None = None,
    ) -> None:
        """`speculator`: speculative decoding as given; else the one `config` asks for
        (`speculation_max_k` > 0), recording for online distillation into `osd` if given."""
        self.config = config
        self.runner = ModelRunner(config)
        self.tokenizer = Tokenizer(config.model_path)
        self.lora = self.runner.lora
        cache = self.runner.kv_cache
        if speculator is None:
            speculator = create_speculator(
                config,
                vocab_size=self.runner.model_config.vocab_size,
                num_cache_tokens=self._draft_cache_tokens(),
                osd=osd,
            )
        elif osd is not None:
            speculator.osd = osd
        self.speculator = speculator
        self.block_manager = BlockManager(cache.num_blocks, cache.block_size)
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=config.max_num_seqs,
            max_batched_tokens=config.max_batched_tokens,
            slots=self.lora.slots if self.lora else SlotTable(0),
            fairness=VirtualTokenCounter(config.vtc_input_weight, config.vtc_output_weight),
        )
        self.inputs = InputProcessor(
            self.tokenizer,
            max_model_len=self.runner.max_model_len,
            vocab_size=self.runner.model_config.vocab_size,
            max_cache_tokens=cache.num_blocks * cache.block_size,
        )
        self.outputs = OutputProcessor(self.tokenizer, config.device)
        self.sampler = Sampler()
        self.states: dict[str, RequestState] = {}
        self._seq_ids = itertools.count()
        self.num_preemptions = 0
        self.num_steps = 0
        self.num_forward_passes = 0  # target passes that ran (speculation makes fewer)
        self._last_emitted: dict[int, int] = {}

    # Requests -------------------------------------------------------------------------

    def add_request(self, request: GenerateRequest) -> None:
        """Queue a request; raises `EngineRequestError` if it cannot be served."""
        if request.request_id in self.states:
            raise EngineRequestError(f"request {request.request_id!r} is already running")
        if request.adapter_id is not None and (
            self.lora is None or not self.lora.has(request.adapter_id)
        ):
            raise EngineRequestError(
                f"adapter {request.adapter_id!r} is not loaded on this runtime",
                code="adapter_not_found",
                param="model",
                status=404,
            )
        if request.sampling.speculation is not None:
            try:
                parse_policy(request.sampling.speculation)
            except SpecPolicyError as exc:
                raise EngineRequestError(str(exc), param="sampling.speculation") from exc
        prepared = self.inputs.process(request)
        seq = Sequence(
            next(self._seq_ids),
            prepared.prompt_token_ids,
            max_tokens=prepared.max_tokens,
            block_size=self.config.block_size,
            request_id=request.request_id,
            tenant_id=request.tenant_id,
            adapter_id=request.adapter_id,
            params=request.sampling,
        )
        self.states[request.request_id] = self.outputs.new_state(prepared, seq)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> None:
        state = self.states.pop(request_id, None)
        if state is not None:
            self.scheduler.finish(state.seq, "cancelled")
            if self.speculator is not None:
                self.speculator.release(state.seq, "cancelled")

    def has_unfinished_requests(self) -> bool:
        return bool(self.states)

    # The step -------------------------------------------------------------------------

    def step(self) -> StepEvents:
        spec = self.speculator
        if spec is not None:
            self._propose(spec)
        batch = self.scheduler.schedule()
        self.num_preemptions += len(batch.preempted)
        self.num_steps += 1
        if spec is not None and batch.preempted:
            spec.forget_cache(batch.preempted)
        events = [self._finish(seq, "length") for seq in batch.finished]
        if batch.is_empty:
            return events
        try:
            if self.lora is not None:
                self.lora.apply_pending_loads()
            forward_batch, logits = self.runner.forward(batch.seqs)
            self.num_forward_passes += 1
        except (AdapterError, RuntimeError) as exc:
            log.exception("forward pass failed; failing its %d requests", len(batch.seqs))
            return events + [self._finish(i.seq, "error", str(exc)) for i in batch.seqs]
        # Decodes (and verifications) compute exactly the tokens they need logits of.
        decode = {id(i) for i in forward_batch.items if i.num_new_tokens == i.num_logits}
        decode_tokens = sum(i.num_new_tokens for i in forward_batch.items if id(i) in decode)
        events += self._postprocess(forward_batch, logits)
        if spec is not None:
            spec.end_step(
                prefill_tokens=forward_batch.num_tokens - decode_tokens,
                num_decode_tokens=sum(self._last_emitted.get(i, 0) for i in decode),
            )
        return events

    def _propose(self, spec: Speculator) -> None:
        """Attach drafts to the decoding requests before the scheduler lays out the step."""
        running = self.scheduler.running
        num_decoding = sum(1 for s in running if s.num_uncomputed_tokens == 1)
        pending = sum(s.num_uncomputed_tokens for s in running if s.num_uncomputed_tokens > 1)
        pending += sum(s.num_uncomputed_tokens for q in self.scheduler.waiting.values() for s in q)
        budget = self.config.max_batched_tokens
        rows = {}
        for seq in running:
            state = self.states.get(seq.request_id)
            if state is not None:
                rows[seq.seq_id] = state.row
        spec.propose(
            running,
            rows,
            prefill_tokens=min(pending, max(0, budget - num_decoding)),
            token_budget=budget,
            max_model_len=self.runner.max_model_len,
        )

    def load_draft_proposer(self, source: object) -> Proposer:
        """A draft-model proposer for this engine from `source` (a draft folder or URL, e.g.
        the one `finetune.draft_builder.latest_draft_version` names, or a `DraftLM`).

        Slow (reads and converts the weights): call it off the step thread, then hand the
        result to `set_proposer`. Its draft KV cache reuses the current draft's memory.
        """
        cache = self.runner.kv_cache
        return draft_proposer(
            source,
            vocab_size=self.runner.model_config.vocab_size,
            num_tokens=self._draft_cache_tokens(),
            block_size=cache.block_size,
            dtype=self.config.dtype,
            device=self.config.device,
            reuse=self.speculator.proposer if self.speculator is not None else None,
        )

    def _draft_cache_tokens(self) -> int:
        """Tokens a draft cache holds: what the target's does, plus room for every
        sequence's proposals and a partial block — the draft never runs out first."""
        cache = self.runner.kv_cache
        per_seq = MAX_FIXED_K + cache.block_size
        return cache.num_blocks * cache.block_size + self.config.max_num_seqs * per_seq

    def set_proposer(self, proposer: Proposer) -> None:
        """Replace the speculation proposer (a new draft version) between two steps.

        Thread-safe: call it from any thread once the new proposer is loaded (loading is
        slow: do it off the step thread: `load_draft_proposer(url)`). The swap
        happens at the start of the next step; requests in flight keep running, and their
        draft KV caches are rebuilt lazily by the new proposer on its first proposal.
        """
        if self.speculator is None:
            raise RuntimeError("this engine does not speculate (LMAAS_SPECULATION_MAX_K=0)")
        self.speculator.swap_proposer(proposer)

    def _postprocess(self, batch: ForwardBatch, logits: torch.Tensor) -> StepEvents:
        sampled = self._sample(batch, logits)
        events: StepEvents = []
        self._last_emitted.clear()
        for item, (tokens, num_rejected, logprobs) in zip(batch.items, sampled, strict=True):
            self.scheduler.advance(item, tokens, num_rejected)
            self._last_emitted[id(item)] = len(tokens)
            state = self.states.get(item.seq.request_id)
            if not tokens or state is None:
                continue
            event, reason = self.outputs.on_tokens(state, tokens, logprobs)
            if reason is not None:
                self._release(state.seq, reason)
            events.append((item.seq.request_id, event))
        return events

    def _sample(self, batch: ForwardBatch, logits: torch.Tensor) -> list[tuple]:
        """Per item: (new tokens, rejected drafts, logprobs) — one batched sampler call."""
        rows, picks = [], []
        for item, offset in zip(batch.items, batch.logits_offsets, strict=True):
            if item.num_logits == 1:
                rows.append(offset)
                picks.append(self.states[item.seq.request_id].row)
        out = None
        if rows:
            selected = logits if len(rows) == logits.shape[0] else logits[rows]
            out = self.sampler(selected, picks)
        results: list[tuple] = []
        verifying: list[tuple[int, VerifyEntry]] = []
        k = 0
        for item, offset in zip(batch.items, batch.logits_offsets, strict=True):
            if item.num_logits == 0:
                results.append(([], 0, None))
            elif item.num_logits == 1 and out is not None:
                lp = None if out.logprobs is None else [(out.logprobs[k], out.top_logprobs[k])]
                results.append(([out.token_ids[k]], 0, lp))
                k += 1
            else:
                if self.speculator is None:
                    raise RuntimeError(f"sequence {item.seq.seq_id} carries drafts but no proposer")
                row = self.states[item.seq.request_id].row
                entry = VerifyEntry(item.seq, offset, item.num_logits, row)
                verifying.append((len(results), entry))
                results.append(None)
        if verifying:
            entries = [e for _, e in verifying]
            verified = self.speculator.verify(logits, entries)  # type: ignore[union-attr]
            for (index, _), (tokens, rejected) in zip(verifying, verified, strict=True):
                results[index] = (tokens, rejected, None)
        return results

    def _finish(
        self, seq: Sequence, reason: str, error: str | None = None
    ) -> tuple[str, GenerateEvent]:
        state = self.states[seq.request_id]
        event = self.outputs.finish(state, reason, error)
        self._release(seq, reason, error)
        return seq.request_id, event

    def _release(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if not seq.is_finished:
            self.scheduler.finish(seq, reason, error)
        self.states.pop(seq.request_id, None)
        if self.speculator is not None:
            self.speculator.release(seq, reason)

    # Adapters (call from the thread that runs `step`) -------------------------------------

    def read_adapter(self, adapter_id: str, folder: Path | str) -> LoraAdapter:
        """Read and validate an adapter (thread-safe, slow: do it off the step thread)."""
        if self.lora is None:
            raise EngineRequestError("this runtime serves no adapters (LMAAS_LORA_SLOTS=0)")
        try:
            return self.lora.read(adapter_id, folder)
        except AdapterError as exc:
            raise EngineRequestError(str(exc), code="invalid_adapter", param="adapter") from exc

    def add_adapter(self, adapter: LoraAdapter, *, pin: bool = False) -> None:
        if self.lora is None:
            raise EngineRequestError("this runtime serves no adapters (LMAAS_LORA_SLOTS=0)")
        self.lora.add(adapter, pin=pin, in_use=self._adapter_in_use)

    def remove_adapter(self, adapter_id: str) -> bool:
        """Forget an adapter; False while requests still use it."""
        if self.lora is None or self._adapter_in_use(adapter_id):
            return False
        return self.lora.remove(adapter_id)

    def _adapter_in_use(self, adapter_id: str) -> bool:
        return any(s.seq.adapter_id == adapter_id for s in self.states.values())

    def stats(self) -> EngineStats:
        return EngineStats(
            num_waiting=self.scheduler.num_waiting,
            num_running=self.scheduler.num_running,
            kv_usage=self.block_manager.usage,
            num_preemptions=self.num_preemptions,
            num_adapters_on_device=len(self.lora.slots.resident()) if self.lora else 0,
            num_steps=self.num_steps,
            num_forward_passes=self.num_forward_passes,
            speculation=self.speculator.snapshot() if self.speculator else None,
        )

    # Convenience for tests and benchmarks -------------------------------------------------

    def generate(self, requests: list[GenerateRequest]) -> dict[str, list[GenerateEvent]]:
        """Run `requests` to completion; every event of each, by request id."""
        events: dict[str, list[GenerateEvent]] = {r.request_id: [] for r in requests}
        for request in requests:
            self.add_request(request)
        while self.has_unfinished_requests():
            for request_id, event in self.step():
                events[request_id].append(event)
        return events
