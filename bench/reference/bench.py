#!/usr/bin/env python3
"""PyTorch reference timings for `cargo xtask bench` (same workloads as kiln's, random init from the real
configs in bench/configs/, fp32, CPU with the given thread count, or `--device cuda`). Prints one JSON object.

    python bench/reference/bench.py generate --threads 2 [--quick]

The training workloads (train-bart-lora, train-bart-full, train-bert-adapters) time one optimizer step as kiln's
`kiln bench train-…` does: forward, token / class cross-entropy, backward, gradient clipping at norm 1.0, AdamW
(lr 1e-4, weight decay 0.01, eps 1e-8), with every dropout set to 0 (kiln's BART has none). Run one workload per
process: `peak_rss_bytes` is the process's peak resident memory (getrusage ru_maxrss).
"""
import argparse
import json
import os
import statistics
import resource
import time
from pathlib import Path

import torch
import transformers

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_config(name):
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    return transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def sync():
    """Wait for queued GPU work, so that a timing covers it (no-op on CPU)."""
    if torch.cuda.is_available() and torch.get_default_device().type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
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


def ids(rows, length, lo, hi):
    return torch.randint(lo, hi, (rows, length))


def train_timing(step, forwards, reps):
    losses = []

    def one():
        losses.append(step())

    r = timeit(one, reps)
    r["steps_per_s"] = 1.0 / r["median_s"]
    # The forward pass timed within each step (as kiln does), the warm-up step's left out.
    r["forward_median_s"] = statistics.median(forwards[1:])
    r["losses"] = losses
    return r


def make_step(model, loss_fn):
    """One AdamW step; `forwards` collects the time of each step's forward pass (the loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, eps=1e-8)
    forwards = []

    def step():
        t = time.perf_counter()
        loss = loss_fn()
        sync()
        forwards.append(time.perf_counter() - t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, forwards, sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())


def train_bart(quick, lora):
    torch.manual_seed(0)
    cfg = load_config("bart-base")
    cfg.dropout = cfg.attention_dropout = cfg.activation_dropout = 0.0
    model = transformers.BartForConditionalGeneration(cfg)
    if lora:
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=8, lora_alpha=16,
                                                           lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    model.train()
    b, src, tgt = (2, 128, 32) if quick else (4, 512, 128)
    x = ids(b, src, 3, 50000)
    labels = ids(b, tgt, 3, 50000)
    mask = torch.ones_like(x)
    # labels= makes transformers shift them right after decoder_start_token_id and take the mean token CE.
    step, forwards, trainable, total = make_step(model, lambda: model(input_ids=x, attention_mask=mask,
                                                                     labels=labels).loss)
    r = train_timing(step, forwards, 2 if quick else 3)
    r.update(shape={"batch": b, "source": src, "target": tgt}, trainable_params=trainable, total_params=total)
    return r


class BottleneckAdapter(torch.nn.Module):
    """Pfeiffer adapter as kiln's (`kiln_peft::Adapter`): x + up(relu(down(x))), up initialised to zero."""

    def __init__(self, d, m):
        super().__init__()
        self.adapter_down = torch.nn.Linear(d, m)
        self.adapter_up = torch.nn.Linear(m, d)
        torch.nn.init.normal_(self.adapter_down.weight, std=0.02)
        torch.nn.init.zeros_(self.adapter_down.bias)
        torch.nn.init.zeros_(self.adapter_up.weight)
        torch.nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x):
        return x + self.adapter_up(torch.relu(self.adapter_down(x)))


class DenseWithAdapter(torch.nn.Module):
    """A layer's output dense followed by its adapter (kiln applies the adapter there, before the residual and
    LayerNorm)."""

    def __init__(self, dense, adapter):
        super().__init__()
        self.dense = dense
        self.adapter = adapter

    def forward(self, x):
        return self.adapter(self.dense(x))


def train_bert_adapters(quick):
    torch.manual_seed(0)
    cfg = load_config("bert-base-uncased")
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    cfg.num_labels = 2
    model = transformers.BertForSequenceClassification(cfg)
    for layer in model.bert.encoder.layer:
        layer.output.dense = DenseWithAdapter(layer.output.dense, BottleneckAdapter(cfg.hidden_size, 64))
    for name, p in model.named_parameters():
        p.requires_grad = ".adapter." in name or name.startswith("classifier.")
    model.train()
    b, t = (4, 32) if quick else (16, 64)
    x = ids(b, t, 0, 30522)
    mask = torch.ones_like(x)
    labels = torch.arange(b) % 2
    step, forwards, trainable, total = make_step(model, lambda: model(input_ids=x, attention_mask=mask,
                                                                     labels=labels).loss)
    r = train_timing(step, forwards, 2 if quick else 5)
    r.update(shape={"batch": b, "seq": t, "num_labels": 2}, trainable_params=trainable, total_params=total)
    return r


WORKLOADS = {
    "generate": generate,
    "bert": bert,
    "seq2seq": seq2seq,
    "train-bart-lora": lambda q: {"train_bart_lora": train_bart(q, True)},
    "train-bart-full": lambda q: {"train_bart_full": train_bart(q, False)},
    "train-bert-adapters": lambda q: {"train_bert_adapters": train_bert_adapters(q)},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=list(WORKLOADS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    # `cuda` for `cargo xtask gpu-check`: models and inputs are created there (torch's default device).
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_default_device(a.device)
    res = WORKLOADS[a.what](a.quick)
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "threads": a.threads,
                      "device": a.device,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "results": res}))


if __name__ == "__main__":
    main()
