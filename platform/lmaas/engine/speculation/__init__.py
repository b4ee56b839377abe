"""Speculative decoding: proposers, verification, the SmartSpec controller, OSD recording.

- `policy`: the `off` / `fixed:K` / `smartspec` policy strings.
- `controller` (+ `acceptance`, `step_time`): how many tokens each request proposes.
- `proposer` (+ `prompt_lookup`): who proposes — a draft model or n-gram prompt lookup.
- `rejection`: verification that keeps outputs exactly those of the target model.
- `osd_buffer`: what the runtime records for online distillation of the draft.
- `metrics`: the speculation counters and the `SpecStats` accumulator.

Only `policy`, `controller`, `acceptance`, `step_time`, `prompt_lookup`, `osd_buffer` and
`metrics` are torch-free; import the others explicitly.
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
