//! Integration tests of cohort-wire: golden vectors, property tests, fuzz-corpus replay.

mod corpus;
mod golden;
mod props;
mod session;
