//! The router's one integration-test binary: real listeners, in-process
//! backends (and a real redis-server for TCP mode).

mod abuse;
mod balance;
mod h2;
mod lifecycle;
mod outlier;
mod plain;
mod protocols;
mod retry;
mod split;
mod stats;
mod support;
mod tcp;
