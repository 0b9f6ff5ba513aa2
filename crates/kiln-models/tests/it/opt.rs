//! OPT parity (the shared decoder-only checks in causal.rs).

crate::causal::causal_parity_tests!("opt");
