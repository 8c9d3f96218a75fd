//! Differential privacy of a node's training: DP-SGD ([`dpsgd`]) and its accountant
//! ([`accountant`]), so that everything a node releases (its predictions, or its
//! parameters under fedavg) is post-processing of an (ε, δ)-differentially private
//! model with respect to any one of its private examples.

pub mod accountant;
pub mod dpsgd;
