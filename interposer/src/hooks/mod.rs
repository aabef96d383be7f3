//! The exported functions that stand in for the C library's. Each forwards to the real one
//! and records what it acquired or released.

mod alloc;
mod dir;
mod dl;
pub(crate) mod fd;
mod foreign;
mod idle;
mod mmap;
mod namespace;
mod process;
mod stream;
mod thread;
