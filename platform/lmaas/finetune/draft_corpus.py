"""Self-generated data for building and measuring drafts: prompts from templates, the target's answers.

Nothing is downloaded. Prompts are built from templates over a fixed list of topics, split
into disjoint train / held-out halves by topic; the answers are the target's own greedy
generations, so that a draft is trained on, and measured on, exactly the tokens greedy
speculative decoding would verify. Workloads:

- `chat`: open questions ("Explain …", "Give three tips for …");
- `grounded`: summarise / rewrite / shorten a text that the target wrote first (the input-
  grounded workload of the benchmark: the answer copies much of its prompt);
- `code`: small Python functions — the shifted workload for online distillation.

`teacher_signals` runs the target once over samples and keeps, at each answer position,
its top-K token ids and log-probabilities (and hence the tail mass): enough for forward-KL
distillation and acceptance measurement without keeping 49k logits per token.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = [
    "Sample",
    "TeacherSignals",
    "Workload",
    "generate_samples",
    "make_prompts",
    "teacher_signals",
]

Workload = Literal["chat", "grounded", "code"]
Progress = Callable[[int, int, str], None]

_TOPICS = [
    "photosynthesis",
    "the water cycle",
    "volcanoes",
    "black holes",
    "the Roman Empire",
    "machine learning",
    "climate change",
    "the human heart",
    "electric cars",
    "honey bees",
    "the internet",
    "vaccines",
    "the moon landing",
    "coffee",
    "recycling",
    "earthquakes",
    "the French Revolution",
    "solar panels",
    "sleep",
    "the immune system",
    "chess",
    "rainforests",
    "the printing press",
    "gravity",
    "dinosaurs",
    "the stock market",
    "bread baking",
    "whales",
    "democracy",
    "the Great Wall of China",
    "batteries",
    "meditation",
    "the Olympic Games",
    "tides",
    "the piano",
    "antibiotics",
    "deserts",
    "airplanes",
    "the periodic table",
    "friendship",
    "time management",
    "gardening",
    "the Renaissance",
    "rainbows",
    "penguins",
    "public speaking",
    "the Amazon river",
    "cloud computing",
    "healthy eating",
    "the solar system",
    "languages",
    "museums",
    "bicycles",
    "glaciers",
    "the moon",
    "volunteering",
    "earth's atmosphere",
    "music",
    "trains",
    "mountains",
    "the ocean",
    "robots",
    "bridges",
    "money",
]
_CHAT = [
    "Explain {t} in simple terms.",
    "What are the most important facts about {t}?",
    "Give three tips for someone learning about {t}.",
    "Why is {t} important?",
    "Write a short paragraph about {t}.",
    "What would a child find interesting about {t}?",
    "Describe {t} to someone who has never heard of it.",
    "List some common misconceptions about {t}.",
    "How has {t} changed over time?",
    "What questions do people often ask about {t}?",
]
_SOURCE = "Write a detailed paragraph of about 100 words about {t}."
_GROUNDED = [
    "Summarize the following text in two sentences.\n\n{text}",
    "Rewrite the following text in simpler words.\n\n{text}",
    "Shorten the following text, keeping its main points.\n\n{text}",
    "Repeat the following text, fixing any mistakes.\n\n{text}",
    "Turn the following text into a bulleted list of its key points.\n\n{text}",
]
_CODE_TASKS = [
    "returns the sum of a list of numbers",
    "reverses a string",
    "checks whether a number is prime",
    "counts the vowels in a string",
    "returns the largest element of a list",
    "computes the factorial of n",
    "returns the n-th Fibonacci number",
    "removes duplicates from a list",
    "checks whether a string is a palindrome",
    "converts Celsius to Fahrenheit",
    "merges two sorted lists",
    "counts words in a sentence",
    "returns the average of a list",
    "finds the index of an item in a list",
    "capitalizes every word of a sentence",
    "returns the even numbers of a list",
    "computes the greatest common divisor of two numbers",
    "flattens a list of lists",
    "sorts a list of dictionaries by a key",
    "reads a file and returns its lines",
    "returns the square of every number in a list",
    "checks whether a year is a leap year",
    "counts how often each character appears in a string",
    "returns the minimum of three numbers",
    "joins a list of strings with commas",
    "returns the last n items of a list",
    "converts a list of strings to integers",
    "checks whether two strings are anagrams",
    "computes the power of a number",
    "returns the length of the longest word",
]
_CODE = [
    "Write a Python function that {t}.",
    "Write a short Python function that {t}, with a docstring.",
    "Show Python code for a function that {t}.",
]


@dataclass
class Sample:
    """A prompt (chat-formatted token ids) and the target's answer."""

    token_ids: list[int]
    prompt_len: int
    workload: str = ""

    @property
    def answer(self) -> list[int]:
        return self.token_ids[self.prompt_len :]


def make_prompts(
    workload: Workload, num: int, *, split: Literal["train", "heldout"], seed: int = 0
) -> list[str]:
    """`num` user messages of `workload`; `train` and `heldout` use disjoint topics/tasks."""
    rng = random.Random(f"{workload}-{split}-{seed}")
    pool = _CODE_TASKS if workload == "code" else _TOPICS
    half = len(pool) // 2
    topics = pool[:half] if split == "train" else pool[half:]
    templates = {"chat": _CHAT, "grounded": [_SOURCE], "code": _CODE}[workload]
    return [rng.choice(templates).format(t=rng.choice(topics)) for _ in range(num)]


def _chat_ids(tokenizer: Any, message: str) -> list[int]:
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    return list(out["input_ids"])


@torch.inference_mode()
def _generate(
    model: Any, prompts: list[list[int]], max_new_tokens: int, pad_id: int, eos_id: int
) -> list[list[int]]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ids.device.type == "cpu"):
        out = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
    answers = []
    for row in out[:, width:].tolist():
        answer = []
        for t in row:
            answer.append(t)
            if t == eos_id:
                break
        answers.append(answer)
    return answers


def generate_samples(
    model: Any,
    tokenizer: Any,
    workload: Workload,
    num: int,
    *,
    split: Literal["train", "heldout"] = "train",
    max_new_tokens: int = 128,
    batch_size: int = 16,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[Sample]:
    """`num` samples of `workload`: prompts from templates, answers from `model` (greedy)."""
    messages = make_prompts(workload, num, split=split, seed=seed)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    eos_id = tokenizer.eos_token_id
    if workload == "grounded":  # first the text to work on, written by the model itself
        sources = [_chat_ids(tokenizer, m) for m in messages]
        texts: list[str] = []
        for start in range(0, num, batch_size):
            outs = _generate(model, sources[start : start + batch_size], 140, pad_id, eos_id)
            texts += [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]
            if progress:
                progress(min(start + batch_size, num), 2 * num, f"{workload}: source texts")
        rng = random.Random(f"grounded-{split}-{seed}")
        messages = [rng.choice(_GROUNDED).format(text=t) for t in texts]
    prompts = [_chat_ids(tokenizer, m) for m in messages]
    samples: list[Sample] = []
    done_before = num if workload == "grounded" else 0
    for start in range(0, num, batch_size):
        batch = prompts[start : start + batch_size]
        for p, a in zip(
            batch, _generate(model, batch, max_new_tokens, pad_id, eos_id), strict=True
        ):
            samples.append(Sample(token_ids=p + a, prompt_len=len(p), workload=workload))
        if progress:
            progress(
                done_before + min(start + batch_size, num),
                done_before + num,
                f"{workload}: answers",
            )
    return samples


@dataclass
class TeacherSignals:
    """The target's top-K at the answer positions of one sample (position p predicts token p)."""

    positions: torch.Tensor  # (N,) long: token positions covered
    top_ids: torch.Tensor  # (N, K) long
    top_logprobs: torch.Tensor  # (N, K) float32

    @property
    def argmax(self) -> torch.Tensor:
        return self.top_ids[:, 0]


@torch.inference_mode()
def teacher_signals(
    model: Any,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    *,
    top_k: int = 32,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[TeacherSignals]:
    """The target's top-K log-probs predicting `sequences[i][p]` for each p in `positions[i]`."""
    out: list[TeacherSignals] = []
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    results: dict[int, TeacherSignals] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):  # right padding: positions stay where they are
            ids[row, : len(sequences[i])] = torch.tensor(list(sequences[i]))
            mask[row, : len(sequences[i])] = 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.device.type == "cpu"):
            logits = model(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device)
            ).logits
        for row, i in enumerate(idx):
            pos = torch.tensor(
                sorted(p for p in positions[i] if 0 < p < len(sequences[i])), dtype=torch.long
            )
            logp = logits[row, pos - 1].float().log_softmax(-1)
            top = logp.topk(top_k, dim=-1)
            results[i] = TeacherSignals(pos, top.indices.cpu(), top.values.cpu())
        if progress:
            progress(min(start + batch_size, len(order)), len(order), "teacher signals")
    out = [results[i] for i in range(len(sequences))]
    return out
