//! The control plane: what the donation stream is checked against and who processes which
//! partition. Neither is derived from donations; each has a log of its own.
//!
//! - [`campaigns`]: campaign definitions, closes and their reconciliation, on the control log.
//! - [`cluster`]: several nodes on one shared log: partition ownership, membership, and the
//!   results topic through which every node sees every partition's results.

pub mod campaigns;
pub mod cluster;
