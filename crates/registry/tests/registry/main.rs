//! The registry's integration tests, in one binary: the embedded registry, and the
//! Redis registry against a real `redis-server` that each test starts.

mod common;
mod embedded;
mod redis;
