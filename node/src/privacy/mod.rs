//! Differential privacy of a node's training: the accountant (RDP of the subsampled
//! Gaussian mechanism), which turns a run's sampling rate, noise multiplier and step
//! count into the (ε, δ) it spends, and finds the noise a target ε needs.

pub mod accountant;
