//! kiln-train: the training loop, recipes, and their reports (metrics JSON lines, charts).

pub mod chart;
