//! Differential privacy of a node's training (in progress: DP-SGD's step).

pub mod dpsgd;
