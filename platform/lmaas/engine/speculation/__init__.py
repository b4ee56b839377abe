"""Speculative decoding: proposers, verification, the SmartSpec controller, OSD recording.

- `policy`: the `off` / `fixed:K` / `smartspec` policy strings.
- `controller` (+ `acceptance`, `step_time`): how many tokens each request proposes.
- `proposer` (+ `prompt_lookup`): who proposes — a draft model or n-gram prompt lookup.
- `sampling`, `rejection`: verification that keeps outputs exactly those of the target.
- `osd_buffer`: what the runtime records for online distillation of the draft.
- `metrics`: the speculation counters and the `SpecStats` accumulator.

`policy`, `controller`, `acceptance`, `step_time`, `prompt_lookup`, `osd_buffer` and
`metrics` are torch-free; import the others explicitly.

How the engine's step loop drives them (one decoding step over requests R, plus P
prefill tokens of other requests in the same pass):

1. `specs = [SpecRequest(id, num_cached_tokens, resolve_policy(service, request, max_k=K),
   tenant_id, adapter_id)]`. With prompt lookup, first `proposer.propose(seqs, [K]*n)`
   (microseconds) and set each `max_proposals` to what it found; with a draft model, set
   each `draft_catch_up` to `proposer.catch_up_tokens(id, tokens)` (what its draft cache
   has not seen yet: a cost the controller weighs).
2. `plan = controller.plan(specs, prefill_tokens=P, token_budget=room)` → `plan.ks`.
3. With a draft model, `proposal = proposer.propose(seqs, plan.ks)`; with prompt lookup,
   cut the proposals to `plan.ks`. `SpecSequence` carries each request's sampling params
   and generator (the draft samples with them; its q is `proposal.draft_probs(K, V)`).
4. One target pass over the flat batch: request i contributes its last token + its k_i
   proposals (k_i + 1 query tokens, LoRA as usual). Gather the logits into (B, K+1, V)
   and call `verify(logits, draft_tokens, num_proposed, greedy=…, target_probs=p,
   draft_probs=q, generators=…)`, p from the engine's own sampler — the same
   distribution plain decoding would sample from (`sampling.sampling_probs` is the
   reference). Request i emits `out.tokens()[i]`; its KV slots past
   `num_cached_tokens + num_accepted[i] + 1` are freed.
5. Measure the step's seconds (after a device sync), then
   `controller.observe_step(controller.features(specs, ks_used, P), seconds)` — every
   step, speculating or not — and per request `controller.observe_verification(id, k_i,
   accepted_i)`, `stats.record_verification(tenant_id, k_i, accepted_i)`,
   `osd.observe(id, tenant_id, start=len(tokens_before_step), k_i, accepted_i)`; then
   `stats.record_step(seconds, ks_used, num_emitted_total)`.
6. When a request ends: `controller.release(id)`, `proposer.release(id)`,
   `osd.finish(id, all_token_ids, prompt_len, adapter_id)`.

Hot swap of a draft: poll `finetune.draft_builder.latest_draft_version(root)`, load the
new version off the step loop, and replace the proposer between two steps (the new one
rebuilds each sequence's draft cache on its first `propose`).
"""

from lmaas.engine.speculation.controller import SmartSpecController, SpecPlan, SpecRequest
from lmaas.engine.speculation.policy import (
    SpecPolicy,
    SpecPolicyError,
    parse_policy,
    resolve_policy,
)
from lmaas.engine.speculation.step_time import StepFeatures, StepTimeModel

__all__ = [
    "SmartSpecController",
    "SpecPlan",
    "SpecPolicy",
    "SpecPolicyError",
    "SpecRequest",
    "StepFeatures",
    "StepTimeModel",
    "parse_policy",
    "resolve_policy",
]
