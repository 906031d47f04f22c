//! The router's one integration-test binary: real listeners, in-process backends.

mod http;
mod support;
mod tcp;
