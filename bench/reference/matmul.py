#!/usr/bin/env python3
"""PyTorch side of `cargo run --release -p kiln-models --example matmul_floor`: the same shapes, 2 threads, fp32."""
import statistics
import time

import torch

torch.set_num_threads(2)


def median(reps, fn):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def report(name, s, bytes_, flops):
    print(f"{name:<44} {s * 1e3:>9.3f} ms  {bytes_ / s / 1e9:>6.1f} GB/s of weights  {flops / s / 1e9:>6.1f} GFLOP/s")


buf = torch.arange(1 << 28, dtype=torch.float32) % 7
gb = buf.numel() * 4 / 1e9
print(f"torch {torch.__version__} threads {torch.get_num_threads()}: read 1 GiB (sum) {gb / median(5, lambda: buf.sum()):.1f} GB/s")
del buf
with torch.no_grad():
    w = torch.randn(768, 2304)
    x = torch.randn(1, 768)
    report("decode [1,768]x[768,2304]", median(200, lambda: x @ w), 768 * 2304 * 4, 2 * 768 * 2304)
    lin = torch.nn.Linear(768, 2304, bias=False)
    report("decode nn.Linear [1,1,768]", median(200, lambda: lin(x[None])), 768 * 2304 * 4, 2 * 768 * 2304)
    x5 = torch.randn(5, 1, 768)
    report("beam 5 nn.Linear [5,1,768]", median(100, lambda: lin(x5)), 768 * 2304 * 4, 5 * 2 * 768 * 2304)
    head = torch.randn(768, 50257)
    report("LM head [1,768]x[768,50257]", median(20, lambda: x @ head), 768 * 50257 * 4, 2 * 768 * 50257)
    del head
    w = torch.randn(768, 3072)
    x = torch.randn(1024, 768)
    fl = 2 * 1024 * 768 * 3072
    report("GEMM [1024,768]x[768,3072]", median(10, lambda: x @ w), 768 * 3072 * 4, fl)
    dy = torch.randn(1024, 3072)
    report("weight grad xT[768,1024]x[1024,3072]", median(10, lambda: x.t() @ dy), 0, fl)
