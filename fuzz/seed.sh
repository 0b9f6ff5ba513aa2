#!/bin/sh
# Seed fuzz/corpus/<target>/ from the bundled fixtures (idempotent). Run from anywhere.
set -e
cd "$(dirname "$0")"
fx=../fixtures
c=corpus
mkdir -p $c/config $c/safetensors $c/adapter $c/dataset $c/rouge
for m in gpt2 bert opt bart t5 t5-v1_1; do
  cp $fx/$m/config.json $c/config/seed-$m-config.json
  [ -f $fx/$m/generation_config.json ] && cp $fx/$m/generation_config.json $c/config/seed-$m-generation.json
done
for d in $fx/peft/*/; do
  n=$(basename "$d")
  # safetensors target: the file as is; adapter target: selector byte 0 = config JSON, 1 = safetensors.
  head -c 65536 "$d/adapter_model.safetensors" > $c/safetensors/seed-$n
  { printf '\000'; cat "$d/adapter_config.json"; } > $c/adapter/seed-$n-config
  { printf '\001'; head -c 65536 "$d/adapter_model.safetensors"; } > $c/adapter/seed-$n-model
done
# dataset target: selector byte (see fuzz_targets/dataset.rs): 0 sst2 jsonl, 1 sst2 tsv, 12 cnndm jsonl, 5 cnndm csv.
{ printf '\000'; head -c 2048 $fx/samples/sentiment/train.jsonl; } > $c/dataset/seed-sst2-jsonl
{ printf '\001'; head -c 2048 $fx/samples/sentiment/train.tsv; } > $c/dataset/seed-sst2-tsv
{ printf '\014'; head -c 4096 $fx/samples/cnndm/train.jsonl; } > $c/dataset/seed-cnndm-jsonl
{ printf '\005'; head -c 4096 $fx/samples/cnndm/validation.csv; } > $c/dataset/seed-cnndm-csv
# rouge target: flags byte, then target NUL prediction.
{ printf '\001The cats were running quickly.\nA second line.\000The cat ran quick. Another sentence'; } > $c/rouge/seed-1
