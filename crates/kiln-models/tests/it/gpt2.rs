//! GPT-2 parity (the shared decoder-only checks in causal.rs).

crate::causal::causal_parity_tests!("gpt2");
