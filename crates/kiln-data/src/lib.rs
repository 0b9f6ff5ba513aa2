//! kiln-data
