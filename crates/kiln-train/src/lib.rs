//! kiln-train
