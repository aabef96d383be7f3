//! Prints every record of a trace, one per line: a debugging aid for the stream itself.
//! `cargo run -p residue-protocol --example dump -- trace.residue`

use residue_protocol::{DecodeError, Decoder};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: dump TRACE");
        std::process::exit(2);
    };
    let buf = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("dump: cannot read {path}: {e}");
            std::process::exit(2);
        }
    };
    let mut d = Decoder::new();
    let mut pos = 0;
    loop {
        match d.next(&buf[pos..]) {
            Ok(Some((r, n))) => {
                println!("{r:x?}");
                pos += n;
            }
            Ok(None) if pos == buf.len() => break,
            Ok(None) => {
                eprintln!("dump: {}", DecodeError::truncated(d.offset()));
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("dump: {e}");
                std::process::exit(1);
            }
        }
    }
}
