//! The exported functions that stand in for the C library's. Each forwards to the real one
//! and records what it acquired or released.

mod alloc;
mod dl;
mod foreign;
mod process;
