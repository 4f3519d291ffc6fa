//! Library side of the `progpack` command-line tool: pieces a running program can call itself.
//!
//! - [`map`]: render an allocator's [`Snapshot`](progpack::Snapshot) as a terminal map, an SVG
//!   or a PNG (`progpack map` is a thin wrapper around it).
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod map;
