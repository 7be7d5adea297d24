//! Interceptors through real channels on loopback.

mod detector;
mod features;
mod support;
