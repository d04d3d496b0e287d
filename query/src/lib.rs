//! # tally-query
//!
//! The HTTP side that serves campaign totals and time-range statistics from the state the
//! `tally-pipeline` operators maintain. It reads; it never writes donations.
//!
//! Its routes are added by the `tally serve` work.
