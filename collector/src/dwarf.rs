//! A module file's DWARF, loaded for the report's one pass over it.
//!
//! A distribution's debug file is compressed (the C library's: 3.6 MiB of zlib that inflate to
//! 10 MiB), and inflating it was most of the time between a program's exit and its report.
//! addr2line's own loader inflates every section one after the other into freshly allocated
//! memory, page fault by page fault. Here:
//! - the location lists (`.debug_loc`, `.debug_loclists`: where variables live, 14% of the C
//!   library's data) are not read: finding functions, inlined calls and lines never needs them;
//! - the sections are inflated into one anonymous mapping that asks for transparent huge pages
//!   (a fault per 2 MiB instead of per 4 KiB, where the system allows them);
//! - `.debug_info`, the largest, is inflated on a second thread while this one does the rest
//!   (the program has exited: the machine is ours).
//!
//! A file this does not cover (no `.debug_info` of its own, a dwz supplementary file, zstd
//! compression) is left to addr2line's loader, which follows debug links. Split units
//! (`-gsplit-dwarf`) are not loaded here: their frames are named by the symbol table.

use std::cell::OnceCell;
use std::ops::Range;
use std::path::Path;

use addr2line::gimli::{self, EndianSlice, RunTimeEndian, SectionId};
use object::{CompressionFormat, Object, ObjectSection, SymbolMap, SymbolMapName};

pub type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

/// The sections of one file, inflated where they were compressed.
pub struct Sections {
    file: memmap2::Mmap,
    inflated: memmap2::MmapMut,
    endian: RunTimeEndian,
    /// Where each section's bytes are.
    found: Vec<(SectionId, Bytes)>,
}

#[derive(Clone)]
enum Bytes {
    File(Range<usize>),
    Inflated(Range<usize>),
}

/// The sections [`gimli::Dwarf::load`] asks for that symbolization never reads.
const UNUSED: [SectionId; 2] = [SectionId::DebugLoc, SectionId::DebugLocLists];

/// The sections [`gimli::Dwarf::load`] asks for (gimli 0.34's list).
const SECTIONS: [SectionId; 13] = [
    SectionId::DebugAbbrev,
    SectionId::DebugAddr,
    SectionId::DebugAranges,
    SectionId::DebugInfo,
    SectionId::DebugLine,
    SectionId::DebugLineStr,
    SectionId::DebugStr,
    SectionId::DebugStrOffsets,
    SectionId::DebugTypes,
    SectionId::DebugLoc,
    SectionId::DebugLocLists,
    SectionId::DebugRanges,
    SectionId::DebugRngLists,
];

impl Sections {
    /// The file's DWARF sections, or `None` where addr2line's loader should read the file
    /// instead (see the module's documentation).
    pub fn load(path: &Path) -> Option<Sections> {
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: a read-only private mapping of a module file, read while the report is built;
        // the files are the target's libraries and their debug files, which nothing rewrites in
        // place (a package upgrade replaces them by rename: the mapping keeps the old file).
        let file = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let object = object::File::parse(&*file).ok()?;
        if object.section_by_name(".gnu_debugaltlink").is_some() {
            return None;
        }
        object.section_by_name(".debug_info").filter(|s| s.size() > 0)?;
        let endian = if object.is_little_endian() { RunTimeEndian::Little } else { RunTimeEndian::Big };
        // Where each wanted section is, and what must be inflated into where.
        let mut found = Vec::new();
        let mut jobs: Vec<(SectionId, Range<usize>, Range<usize>)> = Vec::new();
        let mut total = 0usize;
        for id in SECTIONS.into_iter().filter(|id| !UNUSED.contains(id)) {
            let Some(section) = object.section_by_name(id.name()) else { continue };
            let r = section.compressed_file_range().ok()?;
            let at = usize::try_from(r.offset).ok()?;
            let len = usize::try_from(r.compressed_size).ok()?;
            let input = at..at.checked_add(len).filter(|&end| end <= file.len())?;
            match r.format {
                CompressionFormat::None => found.push((id, Bytes::File(input))),
                CompressionFormat::Zlib => {
                    let end = usize::try_from(r.uncompressed_size).ok().and_then(|size| total.checked_add(size))?;
                    jobs.push((id, input, total..end));
                    total = end;
                }
                _ => return None,
            }
        }
        drop(object);
        let mut inflated = memmap2::MmapMut::map_anon(total.max(1)).ok()?;
        // Fewer page faults where transparent huge pages are allowed; nothing changes elsewhere.
        let _ = inflated.advise(memmap2::Advice::HugePage);
        // Each job's output is the next piece of the mapping; the largest is inflated apart.
        let mut outputs: Vec<(&[u8], &mut [u8])> = Vec::with_capacity(jobs.len());
        let mut rest: &mut [u8] = &mut inflated;
        for (_, input, out) in &jobs {
            let (here, tail) = std::mem::take(&mut rest).split_at_mut(out.len());
            outputs.push((&file[input.clone()], here));
            rest = tail;
        }
        let largest = (0..outputs.len()).max_by_key(|&i| outputs[i].1.len());
        let ok = match largest {
            None => true,
            Some(i) => {
                let (input, out) = outputs.swap_remove(i);
                std::thread::scope(|s| {
                    let apart = s.spawn(|| inflate(input, out));
                    let here = outputs.iter_mut().all(|(input, out)| inflate(input, out));
                    apart.join().unwrap_or(false) && here
                })
            }
        };
        if !ok {
            return None;
        }
        found.extend(jobs.into_iter().map(|(id, _, out)| (id, Bytes::Inflated(out))));
        Some(Sections { file, inflated, endian, found })
    }

    fn bytes(&self, id: SectionId) -> &[u8] {
        match self.found.iter().find(|f| f.0 == id).map(|f| f.1.clone()) {
            Some(Bytes::File(r)) => &self.file[r],
            Some(Bytes::Inflated(r)) => &self.inflated[r],
            None => &[],
        }
    }

    /// These sections parsed, for lookups.
    pub fn parse(&self) -> Option<Parsed<'_>> {
        let mut dwarf = gimli::Dwarf::load(|id| Ok::<_, ()>(EndianSlice::new(self.bytes(id), self.endian))).ok()?;
        dwarf.populate_abbreviations_cache(gimli::AbbreviationsCacheStrategy::Duplicates);
        let ctx = addr2line::Context::from_dwarf(dwarf).ok()?;
        Some(Parsed { ctx, file: &self.file, symbols: OnceCell::new() })
    }
}

/// A file's DWARF, parsed, and its symbol table when asked for.
pub struct Parsed<'a> {
    ctx: addr2line::Context<Reader<'a>>,
    file: &'a [u8],
    symbols: OnceCell<Option<SymbolMap<SymbolMapName<'a>>>>,
}

impl<'a> Parsed<'a> {
    /// Functions (inlined ones first) and lines at file address `probe`. Split units
    /// (`-gsplit-dwarf`) are not loaded: their skeletons name no function, and the symbol table
    /// names the frame instead.
    pub fn find_frames(&self, probe: u64) -> Option<addr2line::FrameIter<'_, Reader<'a>>> {
        self.ctx.find_frames(probe).skip_all_loads().ok()
    }

    /// The symbol at or before file address `probe`, chosen among aliases as addr2line's loader
    /// chooses (object's symbol map: the symbol table, else the dynamic symbols).
    pub fn find_symbol(&self, probe: u64) -> Option<&str> {
        let map = self.symbols.get_or_init(|| object::File::parse(self.file).ok().map(|o| o.symbol_map()));
        map.as_ref()?.containing(probe).map(SymbolMapName::name)
    }
}

/// Inflates one zlib stream (an ELF compressed section's data after its header) into exactly
/// `out`.
fn inflate(input: &[u8], out: &mut [u8]) -> bool {
    let mut z = flate2::Decompress::new(true);
    matches!(z.decompress(input, out, flate2::FlushDecompress::Finish), Ok(flate2::Status::StreamEnd))
        && z.total_out() == out.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::{frames_of, Frame};

    /// The C library's debug file where installed (compressed, the case this is for), else the
    /// test binary itself: both give the same frames through this loader and addr2line's.
    #[test]
    fn frames_match_addr2lines_loader() {
        check(&std::env::current_exe().unwrap(), None);
        let libc_debug = std::fs::read_dir("/usr/lib/debug/.build-id").ok().and_then(|d| {
            d.flatten().flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten()).find_map(|e| {
                let p = e.path();
                let f = std::fs::File::open(&p).ok()?;
                // SAFETY: read-only mapping of a debug file, read in this test only.
                let m = unsafe { memmap2::Mmap::map(&f) }.ok()?;
                let o = object::File::parse(&*m).ok()?;
                let compressed = o
                    .section_by_name(".debug_info")?
                    .compressed_file_range()
                    .is_ok_and(|r| r.format == CompressionFormat::Zlib);
                compressed.then_some(p)
            })
        });
        if let Some(p) = libc_debug {
            check(&p, Some(200));
        }
    }

    /// Compares both loaders on addresses spread over the file's code.
    fn check(path: &Path, samples: Option<usize>) {
        let sections = Sections::load(path).unwrap_or_else(|| panic!("{} loads", path.display()));
        let ctx = sections.parse().expect("a context");
        let theirs = addr2line::Loader::new(path).expect("addr2line loads it");
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: read-only mapping, read in this test only.
        let m = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let o = object::File::parse(&*m).unwrap();
        let text = o.section_by_name(".text").expect("a .text section");
        let n = samples.unwrap_or(400) as u64;
        let mut compared = 0;
        for k in 0..n {
            let probe = text.address() + text.size() * k / n;
            let base = Frame {
                address: probe,
                function: None,
                module: None,
                offset: None,
                file: None,
                line: None,
                inlined: false,
            };
            let ours = frames_of(ctx.find_frames(probe), &base);
            let expected = frames_of(theirs.find_frames(probe).ok(), &base);
            assert_eq!(ours, expected, "{} at {probe:#x}", path.display());
            assert_eq!(ctx.find_symbol(probe), theirs.find_symbol(probe), "{} at {probe:#x}", path.display());
            compared += usize::from(!ours.is_empty());
        }
        assert!(compared > 0, "{}: no address had frames", path.display());
    }
}
