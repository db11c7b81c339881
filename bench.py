"""Speed and memory of the default model on this machine: `make bench` prints a table and writes
runs/bench.json (runs/bench_Nthreads.json for N threads); `make publish` copies it into the reference.

Training speed is reported three ways: real (unpadded) tokens per second; the FLOP/s actually executed,
counted op by op by torch's FlopCounterMode over one step (forward, backward and optimizer); and that
FLOP/s as a fraction of this machine's matmul peak, timed with a large torch.matmul in the same run.
Evaluation speed compares the batched counterfactual evaluation (every pair of a split in a few padded
passes) with the same pairs one item per forward pass.
"""
import os
import resource
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from data import N_UNITS, get_task
import train
from config import Parser, check_positive, check_writable, run_command
from explain import behaviour, generate_explanations, pair_cases
from train import (PretrainConfig, lr_at, new_model, new_optimizer, pretrain_loss, provenance, setup, take_step,
                   write_json)


def seconds_per_call(fn, repeats, warmup=3):
    """The median time of `repeats` calls: on a shared machine a neighbour's burst of work slows a few
    calls, and the median ignores them where a mean would not."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_peak(device):
    """FLOP/s of a large square matmul in the dtype the model's blocks use (float32 on CPU, bfloat16
    under CUDA autocast): what this machine can do at best."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n ** 3 / seconds_per_call(lambda: synchronize(a @ b, device), repeats=10)


def synchronize(x, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    return x


def training_speed(cfg, device, steps):
    """Pretraining steps of the default model: tokens/s and executed FLOP/s."""
    task = get_task(cfg.task)
    world = task.split(cfg.seed).world
    model, step = new_model(cfg, device), iter(range(10 ** 9))
    optimizer = new_optimizer(model, cfg.lr)

    def one_step():
        n = next(step)
        take_step(model, optimizer, pretrain_loss(model, task, world, cfg, n), lr_at(n, cfg))
        synchronize(None, device)

    with FlopCounterMode(display=False) as counter:
        one_step()
    flops_per_step = counter.get_total_flops()
    seconds = seconds_per_call(one_step, repeats=steps)
    rng = np.random.default_rng(0)  # the mean unpadded prompt length of a batch
    tokens = np.mean([len(task.encode(task.random_case(rng, np.arange(N_UNITS)))) for _ in range(2000)])
    return {"seconds_per_step": seconds, "tokens_per_second": cfg.batch_size * tokens / seconds,
            "flop_per_step": flops_per_step, "flop_per_second": flops_per_step / seconds}


def evaluation_speed(cfg, device, n_items):
    """Counterfactual pairs per second, batched against one item per forward pass, and explanations
    generated per second (batched, four tokens each, with generation's key-value cache; encoding the
    queries and decoding the texts included)."""
    task = get_task(cfg.task)
    split = task.split(cfg.seed, n_eval=n_items)
    model = new_model(cfg, device).eval()
    items = split.eval_items
    batched = seconds_per_call(lambda: behaviour(model, task, items), repeats=9, warmup=1)

    @torch.no_grad()
    def one_at_a_time():
        for case in pair_cases(task, items):
            model.answer_logprobs([task.encode(case)], task.answer_ids)
        synchronize(None, device)

    looped = seconds_per_call(one_at_a_time, repeats=3, warmup=0)
    written = seconds_per_call(lambda: generate_explanations(model, task, items), repeats=5, warmup=1)
    return {"pairs": len(items), "batched_pairs_per_second": len(items) / batched,
            "looped_pairs_per_second": len(items) / looped, "batched_speedup": looped / batched,
            "explanations_per_second": len(items) / written}


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10  # Linux reports KiB


def main(argv=None):
    parser = Parser(description="Benchmark speed and memory of the default model; writes runs/bench.json.")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps, 1 to 10000")
    parser.add_argument("--items", type=int, default=900, help="counterfactual pairs to evaluate, 1 to 20000")
    parser.add_argument("--threads", type=int, default=PretrainConfig.threads,
                        help="CPU threads, 1 to 256 (default: a run's own, 1; a suite runs one run per core)")
    args = parser.parse_args(argv)
    run_command(parser, lambda: benchmark(args))


def benchmark(args):
    cfg = PretrainConfig(device=args.device, threads=args.threads)
    check_positive("steps", args.steps, high=10_000)
    check_positive("items", args.items, high=20_000)
    path = os.path.join(train.RUNS_DIR, "bench.json" if cfg.threads == 1 else f"bench_{cfg.threads}threads.json")
    check_writable(train.RUNS_DIR, "the benchmark's output")
    device = setup(cfg.seed, cfg.threads, cfg.device)
    peak = matmul_peak(device)
    training = training_speed(cfg, device, args.steps)
    evaluation = evaluation_speed(cfg, device, args.items)
    result = {"device": str(device), "threads": cfg.threads, "matmul_peak_flop_per_second": peak,
              "training": {**training, "fraction_of_matmul_peak": training["flop_per_second"] / peak},
              "evaluation": evaluation, "peak_memory_mb": peak_memory_mb(device),
              "config": vars(args), "provenance": provenance()}
    rows = [("device", f"{device} ({cfg.threads} threads)"),
            ("matmul peak", f"{peak / 1e9:.1f} GFLOP/s"),
            ("training", f"{training['tokens_per_second'] / 1e3:.1f}k tokens/s, "
                         f"{training['seconds_per_step'] * 1e3:.1f} ms/step of {cfg.batch_size} prompts"),
            ("training FLOP/s", f"{training['flop_per_second'] / 1e9:.1f} GFLOP/s = "
                                f"{result['training']['fraction_of_matmul_peak']:.0%} of the matmul peak"),
            ("evaluation, batched", f"{evaluation['batched_pairs_per_second']:.0f} pairs/s"),
            ("evaluation, one by one", f"{evaluation['looped_pairs_per_second']:.0f} pairs/s"),
            ("batched speed-up", f"{evaluation['batched_speedup']:.0f}x"),
            ("generation, batched", f"{evaluation['explanations_per_second']:.0f} explanations/s"),
            ("peak memory", f"{result['peak_memory_mb']:.0f} MB")]
    for name, value in rows:
        print(f"{name:24s} {value}")
    write_json(result, path)
    print(f"-> {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
