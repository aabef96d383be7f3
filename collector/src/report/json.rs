//! The JSON report (`--json PATH`): the report model serialized as is, schema
//! `residue-report/1`. Field names are a contract with scripts: add fields, never rename.

use std::io::Write;
use std::path::Path;

use super::Report;
use crate::error::{Error, Result};

pub fn to_string(r: &Report) -> String {
    serde_json::to_string_pretty(r).expect("the report model always serializes")
}

/// Writes the report to `path` (truncating a file the user named; `-` is stdout).
pub fn write(r: &Report, path: &Path) -> Result<()> {
    let mut text = to_string(r);
    text.push('\n');
    if path == Path::new("-") {
        return std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| Error::io("residue: cannot write the JSON report", e));
    }
    std::fs::write(path, text)
        .map_err(|e| Error::io(format!("residue: cannot write the JSON report to {}", path.display()), e))
}
