//! # tally-ingest
//!
//! The HTTP side that takes payment callbacks and appends them, durably, to the donation log
//! owned by `tally-pipeline`. It validates and authenticates each callback, answers only after
//! the event is on disk, and never decides totals: that is the pipeline's job.
//!
//! This crate is the entry point of data into tally; its routes are added by the `tally serve`
//! work. Until then donations enter through `tally import`.
