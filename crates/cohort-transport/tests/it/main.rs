//! Transport over real sockets on loopback.

mod support;

mod basics;
mod hostile;
mod replay;
