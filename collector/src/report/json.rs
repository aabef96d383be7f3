//! The JSON report (`--json PATH`): the report model serialized as is, schema
//! `residue-report/1`. Field names are a contract with scripts: add fields, never rename.

use std::io::Write;
use std::path::Path;

use super::Report;
use crate::error::{Error, Result};

/// Writes the report to `path` (truncating a file the user named; `-` is stdout), streamed: the
/// JSON of a run with dozens of children is tens of MiB, never held in memory at once.
pub fn write(r: &Report, path: &Path) -> Result<()> {
    fn stream(r: &Report, w: impl Write) -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, w);
        serde_json::to_writer_pretty(&mut w, r)?;
        w.write_all(b"\n")?;
        w.flush()
    }
    if path == Path::new("-") {
        return stream(r, std::io::stdout().lock()).map_err(|e| Error::io("residue: cannot write the JSON report", e));
    }
    std::fs::File::create(path)
        .and_then(|f| stream(r, f))
        .map_err(|e| Error::io(format!("residue: cannot write the JSON report to {}", path.display()), e))
}
