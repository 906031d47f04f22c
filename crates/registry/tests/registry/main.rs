//! The registry's integration tests, in one binary: the embedded registry, and the
//! Redis registry against a real `redis-server` that each test starts, in plain text and over TLS.

mod common;
mod embedded;
mod redis;
mod tls;
