//! The channel over real sockets on loopback.

mod support;

mod backpressure;
mod failures;
mod malformed;
mod modes;
mod rpc;
