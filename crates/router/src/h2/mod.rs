//! The router's own HTTP/2 server side (RFC 9113, RFC 7541): the client connections that open
//! with the HTTP/2 preface (h2c with prior knowledge). Each connection is one task that reads
//! frames, runs its streams' handlers and writes their answers, strict about what it accepts.

mod body;
mod conn;
mod frame;
mod hpack;
mod huffman;
mod request;

pub(crate) use body::RecvBody;
pub(crate) use conn::{Connection, Limits};
