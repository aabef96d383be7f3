//! One error type for the whole binary. Every error the user sees is one sentence that says what
//! failed and what to do, and carries the exit status `residue` ends with, so `main` never has
//! to guess how to present a failure.

use std::fmt;

/// A failure with its user-facing sentence and the exit status it maps to.
#[derive(Debug)]
pub struct Error {
    message: String,
    /// Exit status of `residue` when this error ends the run (2: usage or environment problem).
    pub exit_code: i32,
}

impl Error {
    /// An error with a complete sentence, exiting with status 2.
    pub fn new(message: impl Into<String>) -> Self {
        Error { message: message.into(), exit_code: 2 }
    }

    /// An I/O error, prefixed with what residue was doing (`context`) when it happened.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        Error::new(format!("{context}: {err}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<residue_protocol::DecodeError> for Error {
    fn from(e: residue_protocol::DecodeError) -> Self {
        Error::new(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
