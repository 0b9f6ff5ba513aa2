//! kiln-metrics
