#!/usr/bin/env python3
"""PyTorch reference timings for `cargo xtask bench` (same workloads as kiln's, random init from the real
configs in bench/configs/, fp32, CPU, the given thread count). Prints one JSON object.

    python bench/reference/bench.py generate --threads 2 [--quick]
"""
import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import transformers

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_config(name):
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    return transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def timeit(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "reps": reps}


def generate(quick):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(load_config("gpt2")).eval()
    ids = torch.randint(0, 50257, (1, 16))
    new = 32 if quick else 128
    out = {}
    with torch.no_grad():
        g = timeit(lambda: model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                                          min_new_tokens=new, pad_token_id=50256), 1 if quick else 3)
        g["tokens_per_s"] = new / g["median_s"]
        out["gpt2_greedy"] = g
        bnew = 16 if quick else 64
        b = timeit(lambda: model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=5,
                                          no_repeat_ngram_size=2, max_new_tokens=bnew, min_new_tokens=bnew,
                                          pad_token_id=50256), 1 if quick else 3)
        b["tokens_per_s"] = bnew / b["median_s"]
        out["gpt2_beam5"] = b
    return out


def seq2seq(quick):
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(load_config("bart-base")).eval()
    src = 128 if quick else 512
    new = 16 if quick else 64
    ids = torch.randint(3, 50265, (1, src))
    with torch.no_grad():
        r = timeit(lambda: model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=4,
                                          max_new_tokens=new, min_new_tokens=new, early_stopping=True), 1 if quick else 3)
    r["tokens_per_s"] = new / r["median_s"]
    return {"bart_beam4": r}


def bert(quick):
    torch.manual_seed(0)
    model = transformers.BertModel(load_config("bert-base-uncased")).eval()
    ids = torch.randint(0, 30522, (16, 64))
    with torch.no_grad():
        r = timeit(lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids)), 2 if quick else 5)
    return {"bert_forward_b16_s64": r}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["generate", "bert", "seq2seq"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = {"generate": generate, "bert": bert, "seq2seq": seq2seq}[a.what](a.quick)
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "threads": a.threads,
                      "results": res}))


if __name__ == "__main__":
    main()
