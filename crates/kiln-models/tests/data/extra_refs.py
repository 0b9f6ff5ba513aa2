#!/usr/bin/env python3
"""Extra references for kiln-models' tests, computed from the checkpoints in fixtures/ (not written by
fixtures/generate.py):

bart_forced_bos.json: BART `generate` with `forced_bos_token_id=0` (as bart-large-cnn's config sets it),
which the fixture's generation_config.json lacks.

    /path/to/venv/bin/python crates/kiln-models/tests/data/extra_refs.py   # transformers 5.24, torch 2.x
"""
import json
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[4]
FIX = ROOT / "fixtures"
out = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__}}

# BART with forced_bos_token_id (on top of the checkpoint's generation_config: forced_eos_token_id=2).
ref = json.loads((FIX / "reference" / "bart.json").read_text())
model = transformers.AutoModelForSeq2SeqLM.from_pretrained(FIX / "bart").eval()
ids = torch.tensor(ref["input_ids"])
mask = torch.tensor(ref["attention_mask"])
bos = {"versions": out["versions"], "input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"], "generate": {}}
modes = {
    "greedy": dict(do_sample=False, num_beams=1, max_new_tokens=10),
    "beam": dict(do_sample=False, num_beams=4, max_new_tokens=10, min_length=5, no_repeat_ngram_size=3),
}
for mode, kw in modes.items():
    kw = dict(kw, forced_bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    with torch.no_grad():
        seqs = model.generate(input_ids=ids, attention_mask=mask, **kw)
    bos["generate"][mode] = {"config": kw, "sequences": seqs.tolist()}
(Path(__file__).resolve().parent / "bart_forced_bos.json").write_text(json.dumps(bos, separators=(",", ":")) + "\n")
print({k: v["sequences"] for k, v in bos["generate"].items()})
