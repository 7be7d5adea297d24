//! Session managers and the layer on real channels over loopback sockets, with the app
//! called in process.

// Indices and counts in tests are small.
#![allow(clippy::cast_possible_truncation)]

mod layer;
#[cfg(feature = "tower-sessions")]
mod store;
mod support;
