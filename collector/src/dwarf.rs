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
//!   (the program has exited: the machine is ours), and only as far as the last unit the
//!   report's addresses are in ends, where `.debug_aranges` places every one of them: a report
//!   through the C library's stdio and start-up reads 1.6 MiB of its 5.7 (the report of W4, a
//!   loop whose one leak is printf's buffer, 19.6 ms to 8.9);
//! - addr2line reads the abbreviations of every compilation unit before its first lookup (a
//!   third of the C library's load: 2,000 units), where a report asks for a few: the units
//!   the addresses are not in are covered with padding before parsing
//!   ([`Sections::keep_units_for`]).
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
    /// `.debug_info` copied out of the file, when it is to be edited and was not inflated.
    info_copy: Option<Vec<u8>>,
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
    /// instead (see the module's documentation). `probes`: the file addresses that will be
    /// looked up. Where `.debug_aranges` places every one of them in a compilation unit,
    /// `.debug_info` is read only as far as the last of those units ends ([`last_unit`]): the
    /// C library's is 5.7 MiB inflated, a report through its stdio and start-up needs the
    /// first 1.6, and inflating it was the longest part of such a report.
    pub fn load(path: &Path, probes: &[u64]) -> Option<Sections> {
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
        // Each job's output is the next piece of the mapping.
        let mut outputs: Vec<(SectionId, &[u8], &mut [u8])> = Vec::with_capacity(jobs.len());
        let mut rest: &mut [u8] = &mut inflated;
        for (id, input, out) in &jobs {
            let (here, tail) = std::mem::take(&mut rest).split_at_mut(out.len());
            outputs.push((*id, &file[input.clone()], here));
            rest = tail;
        }
        // The aranges first: they say how much of .debug_info the probes need.
        let aranges: &[u8] = match outputs.iter().position(|o| o.0 == SectionId::DebugAranges) {
            Some(k) => {
                let (_, input, out) = outputs.swap_remove(k);
                if !inflate(input, out) {
                    return None;
                }
                out
            }
            None => match found.iter().find(|f| f.0 == SectionId::DebugAranges) {
                Some((_, Bytes::File(r))) => &file[r.clone()],
                _ => &[],
            },
        };
        let last = last_unit(aranges, probes, endian);
        // .debug_info, the largest, is inflated apart: as far as `last` ends, or whole.
        let info = outputs.iter().position(|o| o.0 == SectionId::DebugInfo).map(|k| outputs.swap_remove(k));
        let (ok, info_len) = std::thread::scope(|s| {
            let apart = info.map(|(_, input, out)| {
                s.spawn(move || match last {
                    Some(unit) => inflate_through_unit(input, out, unit, endian),
                    None => inflate(input, out).then_some(out.len()),
                })
            });
            let here = outputs.iter_mut().all(|(_, input, out)| inflate(input, out));
            match apart.map(|a| a.join().ok().flatten()) {
                None => (here, None),
                Some(Some(len)) => (here, Some(len)),
                Some(None) => (false, None),
            }
        });
        if !ok {
            return None;
        }
        found.extend(jobs.into_iter().map(|(id, _, out)| match (id, info_len) {
            (SectionId::DebugInfo, Some(len)) => (id, Bytes::Inflated(out.start..out.start + len)),
            _ => (id, Bytes::Inflated(out)),
        }));
        // An uncompressed .debug_info is cut alike (fewer unit headers to read).
        if let (Some(unit), Some(f)) = (last, found.iter_mut().find(|f| f.0 == SectionId::DebugInfo)) {
            if let Bytes::File(r) = &mut f.1 {
                let end = unit_end(&file[r.clone()], unit, endian)?;
                r.end = r.start + end;
            }
        }
        Some(Sections { file, inflated, endian, found, info_copy: None })
    }

    fn bytes(&self, id: SectionId) -> &[u8] {
        if let (SectionId::DebugInfo, Some(copy)) = (id, &self.info_copy) {
            return copy;
        }
        match self.found.iter().find(|f| f.0 == id).map(|f| f.1.clone()) {
            Some(Bytes::File(r)) => &self.file[r],
            Some(Bytes::Inflated(r)) => &self.inflated[r],
            None => &[],
        }
    }

    /// Prepares a [`Sections::parse`] for lookups at file addresses `probes` only: every run of
    /// compilation units that holds none of them is covered with one padding unit (a type unit
    /// header, which addr2line skips without reading its abbreviations). A probe's unit is the
    /// one `.debug_aranges` places it in; nothing is covered unless every compilation unit has
    /// its aranges (otherwise a probe outside them may still be in some unit) and no kept unit
    /// may refer into another (`DW_FORM_ref_addr` and kin: what it refers to must stay). Returns
    /// how many units were covered.
    pub fn keep_units_for(&mut self, probes: &[u64]) -> usize {
        let Some((units, keep)) = self.units_for(probes) else { return 0 };
        // Runs of units to cover: [start, end) byte ranges of .debug_info.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for &(at, len) in &units {
            if keep.binary_search(&at).is_ok() {
                continue;
            }
            match runs.last_mut() {
                Some(run) if run.1 == at => (run.1, run.2) = (at + len, run.2 + 1),
                _ => runs.push((at, at + len, 1)),
            }
        }
        // A run too short for a header stays as it is: those units are parsed.
        runs.retain(|&(start, end, _)| end - start >= PAD_HEADER && end - start - 4 < 0xffff_fff0);
        if runs.is_empty() {
            return 0;
        }
        let endian = self.endian;
        let info: &mut [u8] = match self.found.iter().find(|f| f.0 == SectionId::DebugInfo).map(|f| f.1.clone()) {
            Some(Bytes::Inflated(r)) => &mut self.inflated[r],
            Some(Bytes::File(r)) => self.info_copy.insert(self.file[r].to_vec()),
            None => return 0,
        };
        let mut covered = 0;
        for (start, end, n) in runs {
            pad(&mut info[start..end], endian);
            covered += n;
        }
        covered
    }

    /// Every unit of `.debug_info` (offset, length with its length field), and the offsets of
    /// the compilation units `probes` are in, sorted; `None` where units must not be covered.
    fn units_for(&self, probes: &[u64]) -> Option<(Vec<UnitSpan>, Vec<usize>)> {
        let aranges = Aranges::read(self.bytes(SectionId::DebugAranges), self.endian)?;
        let info = gimli::DebugInfo::new(self.bytes(SectionId::DebugInfo), self.endian);
        let mut units = Vec::new();
        let mut headers = info.units();
        while let Some(h) = headers.next().ok()? {
            let at = h.debug_info_offset()?.0;
            // A unit addr2line takes ranges from without aranges: a probe may be in it.
            let ranged = matches!(h.type_(), gimli::UnitType::Compilation | gimli::UnitType::Skeleton(_));
            if ranged && aranges.listed.binary_search(&at).is_err() {
                return None;
            }
            units.push((at, h.length_including_self()));
        }
        let mut keep: Vec<usize> = probes.iter().filter_map(|&p| aranges.unit_of(p)).collect();
        keep.sort_unstable();
        keep.dedup();
        let abbrev = self.bytes(SectionId::DebugAbbrev);
        for &at in &keep {
            let h = info.header_from_offset(gimli::DebugInfoOffset(at)).ok()?;
            if refers_across(abbrev, h.debug_abbrev_offset().0, self.endian) {
                return None;
            }
        }
        Some((units, keep))
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

/// A unit of `.debug_info`: its offset and its length, the length field included.
type UnitSpan = (usize, usize);

/// Bytes of the padding unit's header: DWARF 5, 32-bit format, a type unit (length, version,
/// unit type, address size, abbreviations offset, type signature, type offset).
const PAD_HEADER: usize = 4 + 2 + 1 + 1 + 4 + 8 + 4;

/// Makes `run` (at least [`PAD_HEADER`] bytes, under 4 GiB) one type unit whose contents are
/// never read.
fn pad(run: &mut [u8], endian: RunTimeEndian) {
    use gimli::Endianity;
    let mut header = [0u8; PAD_HEADER];
    endian.write_u32(&mut header[0..4], (run.len() - 4) as u32);
    endian.write_u16(&mut header[4..6], 5);
    header[6] = gimli::DW_UT_type.0;
    header[7] = 8;
    // Abbreviations offset, signature and type offset: 0 (a type unit's are not read).
    run[..PAD_HEADER].copy_from_slice(&header);
}

/// Whether the abbreviation table at `offset` of `.debug_abbrev` lets a unit refer into another
/// (or cannot be read): attribute forms `DW_FORM_ref_addr`, the supplementary-file forms, or
/// `DW_FORM_indirect` (any form).
fn refers_across(abbrev: &[u8], offset: usize, endian: RunTimeEndian) -> bool {
    use gimli::Reader as _;
    let Some(table) = abbrev.get(offset..) else { return true };
    let mut r = EndianSlice::new(table, endian);
    let scan = |r: &mut Reader<'_>| -> gimli::Result<bool> {
        // Each abbreviation: code, tag, children flag, then (attribute, form) pairs to (0, 0);
        // the table ends with code 0.
        while r.read_uleb128()? != 0 {
            r.read_uleb128()?;
            r.read_u8()?;
            loop {
                let (name, form) = (r.read_uleb128()?, r.read_uleb128()?);
                if name == 0 && form == 0 {
                    break;
                }
                match gimli::DwForm(form as u16) {
                    gimli::DW_FORM_implicit_const => {
                        r.read_sleb128()?;
                    }
                    gimli::DW_FORM_ref_addr
                    | gimli::DW_FORM_ref_sup4
                    | gimli::DW_FORM_ref_sup8
                    | gimli::DW_FORM_GNU_ref_alt
                    | gimli::DW_FORM_indirect => return Ok(true),
                    _ => {}
                }
            }
        }
        Ok(false)
    };
    scan(&mut r).unwrap_or(true)
}

/// The offset of the last compilation unit (in `.debug_info`) that `.debug_aranges` places one
/// of `probes` in; `None` where one of them is in none of its ranges (it may then be in a unit
/// the aranges do not list: everything is read), or where there are no probes.
fn last_unit(aranges: &[u8], probes: &[u64], endian: RunTimeEndian) -> Option<usize> {
    let aranges = Aranges::read(aranges, endian)?;
    probes.iter().try_fold(None, |last: Option<usize>, &p| {
        let unit = aranges.unit_of(p)?;
        Some(Some(last.map_or(unit, |l| l.max(unit))))
    })?
}

/// `.debug_aranges` read: which compilation unit each address range is in.
struct Aranges {
    /// (start, end, unit offset in `.debug_info`), sorted.
    ranges: Vec<(u64, u64, usize)>,
    /// The units that have aranges, sorted.
    listed: Vec<usize>,
}

impl Aranges {
    /// `None` if the section cannot be read.
    fn read(bytes: &[u8], endian: RunTimeEndian) -> Option<Aranges> {
        let aranges = gimli::DebugAranges::new(bytes, endian);
        let (mut ranges, mut listed) = (Vec::new(), Vec::new());
        let mut headers = aranges.headers();
        while let Some(h) = headers.next().ok()? {
            let unit = h.debug_info_offset().0;
            listed.push(unit);
            let mut entries = h.entries();
            while let Some(e) = entries.next().ok()? {
                let r = e.range();
                if r.end > r.begin {
                    ranges.push((r.begin, r.end, unit));
                }
            }
        }
        listed.sort_unstable();
        ranges.sort_unstable();
        Some(Aranges { ranges, listed })
    }

    /// The unit file address `probe` is in, by the latest range that starts at or before it
    /// and holds it.
    fn unit_of(&self, probe: u64) -> Option<usize> {
        let below = self.ranges.partition_point(|r| r.0 <= probe);
        self.ranges[..below].iter().rev().find(|r| probe < r.1).map(|r| r.2)
    }
}

/// Bytes of the unit whose header starts `b`, its initial length included; `None` if `b` is too
/// short for the length or the length is reserved.
fn unit_len(b: &[u8], endian: RunTimeEndian) -> Option<usize> {
    use gimli::Endianity;
    let (len, size) = match endian.read_u32(b.get(..4)?) {
        0xffff_ffff => (endian.read_u64(b.get(4..12)?), 12),
        l if l < 0xffff_fff0 => (u64::from(l), 4),
        _ => return None,
    };
    usize::try_from(len).ok()?.checked_add(size)
}

/// Where the unit at `unit` of `info` ends; `None` if `info` does not hold it whole.
fn unit_end(info: &[u8], unit: usize, endian: RunTimeEndian) -> Option<usize> {
    let end = unit.checked_add(unit_len(info.get(unit..)?, endian)?)?;
    (end <= info.len()).then_some(end)
}

/// Inflates the zlib stream `input` into `out` as far as the unit at `unit` ends, and no
/// further; returns that length.
fn inflate_through_unit(input: &[u8], out: &mut [u8], unit: usize, endian: RunTimeEndian) -> Option<usize> {
    let mut z = flate2::Decompress::new(true);
    // The unit's initial length first (4 bytes, 12 in the 64-bit format), then the rest of it.
    let head = unit.checked_add(12)?.min(out.len());
    inflate_to(&mut z, input, out, head)?;
    let end = unit.checked_add(unit_len(out.get(unit..head)?, endian)?)?;
    if end > out.len() {
        return None;
    }
    inflate_to(&mut z, input, out, end)?;
    Some(end)
}

/// Goes on inflating `input` into `out` until its first `upto` bytes are written.
fn inflate_to(z: &mut flate2::Decompress, input: &[u8], out: &mut [u8], upto: usize) -> Option<()> {
    while (z.total_out() as usize) < upto {
        let (read, written) = (z.total_in() as usize, z.total_out() as usize);
        let status = z.decompress(input.get(read..)?, &mut out[written..upto], flate2::FlushDecompress::None).ok()?;
        let progress = z.total_in() as usize > read || z.total_out() as usize > written;
        if !progress || (status == flate2::Status::StreamEnd && (z.total_out() as usize) < upto) {
            return None;
        }
    }
    Some(())
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

    /// libunits.so (three compilation units, c/libunits_{a,b,c}.c) asked about addresses in
    /// units b and c: unit a is covered, the answers in b and c are those of addr2line's own
    /// loader (inlined frames included), and an address in a finds no function any more, as
    /// it was never parsed.
    #[test]
    fn units_no_probe_is_in_are_covered_and_the_others_answer_alike() {
        let path = residue_fixtures::libunits();
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: read-only mapping of a fixture, read in this test only.
        let m = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let o = object::File::parse(&*m).unwrap();
        let function = |name: &str| {
            use object::ObjectSymbol;
            let s = o.symbols().find(|s| s.name() == Ok(name)).unwrap_or_else(|| panic!("{name} in libunits.so"));
            s.address()..s.address() + s.size()
        };
        let (a, b, c) = (function("units_unused_a"), function("units_leak_b"), function("units_leak_c"));
        let probes: Vec<u64> = b.clone().chain(c.clone()).collect();
        // Without aranges nothing says which unit an address is in: nothing is covered.
        let mut bare = Sections::load(&path, &[]).expect("libunits.so loads");
        bare.found.retain(|f| f.0 != SectionId::DebugAranges);
        assert_eq!(bare.keep_units_for(&probes), 0, "no unit covered without aranges");
        let mut sections = Sections::load(&path, &probes).expect("libunits.so loads");
        assert_eq!(sections.keep_units_for(&probes), 1, "unit a, and only it, is covered");
        let ctx = sections.parse().expect("a context");
        let theirs = addr2line::Loader::new(&path).expect("addr2line loads it");
        let base = nowhere;
        let mut inlined = 0;
        for &probe in &probes {
            let ours = frames_of(ctx.find_frames(probe), &base(probe));
            assert!(ours.first().is_some_and(|f| f.function.is_some()), "a function at {probe:#x}");
            assert_eq!(ours, frames_of(theirs.find_frames(probe).ok(), &base(probe)), "at {probe:#x}");
            inlined += usize::from(ours.len() > 1);
        }
        assert!(inlined > 0, "units_fill is inlined into units_leak_b somewhere");
        let in_a = a.start + 1;
        let named = |frames: Vec<Frame>| frames.iter().any(|f| f.function.as_deref() == Some("units_unused_a"));
        assert!(named(frames_of(theirs.find_frames(in_a).ok(), &base(in_a))));
        assert!(!named(frames_of(ctx.find_frames(in_a), &base(in_a))), "unit a was not parsed");
    }

    /// Probes in libunits.so's first unit only: `.debug_info` is read as far as that unit ends
    /// (inflated that far, where it is compressed), the unit's answers are those of addr2line's
    /// own loader, and the units after it, never read, answer nothing.
    #[test]
    fn debug_info_is_read_as_far_as_the_last_probes_unit_ends() {
        for (path, compressed) in [(residue_fixtures::libunits(), false), (residue_fixtures::libunits_z(), true)] {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: read-only mapping of a fixture, read in this test only.
            let m = unsafe { memmap2::Mmap::map(&f) }.unwrap();
            let o = object::File::parse(&*m).unwrap();
            let info = o.section_by_name(".debug_info").expect("a .debug_info");
            let format = info.compressed_file_range().unwrap().format;
            assert_eq!(format == CompressionFormat::Zlib, compressed, "{}", path.display());
            let function = |name: &str| {
                use object::ObjectSymbol;
                let s = o.symbols().find(|s| s.name() == Ok(name)).unwrap_or_else(|| panic!("{name} in libunits"));
                s.address()..s.address() + s.size()
            };
            let (a, c) = (function("units_unused_a"), function("units_leak_c"));
            let probes: Vec<u64> = a.clone().collect();
            let whole = Sections::load(&path, &[]).expect("loads whole");
            let cut = Sections::load(&path, &probes).expect("loads cut");
            let all = whole.bytes(SectionId::DebugInfo);
            let unit = last_unit(whole.bytes(SectionId::DebugAranges), &probes, whole.endian).expect("a's unit");
            let end = unit_end(all, unit, whole.endian).expect("its end");
            assert!(end < all.len(), "{}: units after a's", path.display());
            assert_eq!(cut.bytes(SectionId::DebugInfo).len(), end, "{}: read as far as a's unit ends", path.display());
            assert_eq!(cut.bytes(SectionId::DebugInfo), &all[..end]);
            let ctx = cut.parse().expect("a context");
            let theirs = addr2line::Loader::new(&path).expect("addr2line loads it");
            for probe in a.clone() {
                let ours = frames_of(ctx.find_frames(probe), &nowhere(probe));
                assert!(ours.first().is_some_and(|f| f.function.is_some()), "a function at {probe:#x}");
                assert_eq!(ours, frames_of(theirs.find_frames(probe).ok(), &nowhere(probe)), "at {probe:#x}");
            }
            let in_c = c.start + 1;
            let named = |frames: Vec<Frame>| frames.iter().any(|f| f.function.as_deref() == Some("units_leak_c"));
            assert!(named(frames_of(theirs.find_frames(in_c).ok(), &nowhere(in_c))));
            assert!(
                !named(frames_of(ctx.find_frames(in_c), &nowhere(in_c))),
                "{}: c's unit was not read",
                path.display()
            );
            // A probe the aranges place in no unit: everything is read.
            let outside = Sections::load(&path, &[a.start, 1]).expect("loads whole");
            assert_eq!(outside.bytes(SectionId::DebugInfo).len(), all.len());
        }
    }

    /// Abbreviation tables are read far enough to see a form that refers into another unit.
    #[test]
    fn cross_unit_references_are_seen_in_abbreviations() {
        // code 1, DW_TAG_subprogram (0x2e), children no; DW_AT_name (0x03) DW_FORM_strp (0x0e),
        // DW_AT_decl_line (0x3b) DW_FORM_implicit_const (0x21) with -3, DW_AT_abstract_origin
        // (0x31) with FORM; end of attributes; end of table.
        let table = |form: u8| vec![0x01, 0x2e, 0x00, 0x03, 0x0e, 0x3b, 0x21, 0x7d, 0x31, form, 0, 0, 0];
        let le = RunTimeEndian::Little;
        assert!(!refers_across(&table(gimli::DW_FORM_ref4.0 as u8), 0, le));
        assert!(refers_across(&table(gimli::DW_FORM_ref_addr.0 as u8), 0, le));
        assert!(refers_across(&table(gimli::DW_FORM_indirect.0 as u8), 0, le));
        // At an offset, and a table cut short: unreadable counts as referring.
        let mut at = vec![0xaa; 5];
        at.extend(table(gimli::DW_FORM_ref4.0 as u8));
        assert!(!refers_across(&at, 5, le));
        assert!(refers_across(&table(gimli::DW_FORM_ref4.0 as u8)[..6], 0, le));
        assert!(refers_across(&at, 100, le));
    }

    /// A frame at `probe` with nothing known yet, which both loaders' frames start from.
    fn nowhere(probe: u64) -> Frame {
        Frame { address: probe, function: None, module: None, offset: None, file: None, line: None, inlined: false }
    }

    /// Compares both loaders on addresses spread over the file's code; then, loaded for the
    /// first quarter of them only (`.debug_info` read as far as their units), on those.
    fn check(path: &Path, samples: Option<usize>) {
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: read-only mapping, read in this test only.
        let m = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let o = object::File::parse(&*m).unwrap();
        let text = o.section_by_name(".text").expect("a .text section");
        let n = samples.unwrap_or(400) as u64;
        let probes: Vec<u64> = (0..n).map(|k| text.address() + text.size() * k / n).collect();
        compare(path, &probes, &[]);
        // Those of the first quarter that the aranges place in a unit (with one that they do
        // not, everything is read).
        let whole = Sections::load(path, &[]).expect("loads");
        let aranges = whole.bytes(SectionId::DebugAranges);
        let placed: Vec<u64> = probes[..probes.len() / 4]
            .iter()
            .copied()
            .filter(|&p| last_unit(aranges, &[p], whole.endian).is_some())
            .collect();
        if !placed.is_empty() {
            compare(path, &placed, &placed);
        }
    }

    /// Compares both loaders at `probes`, ours loaded for `load_for`.
    fn compare(path: &Path, probes: &[u64], load_for: &[u64]) {
        let sections = Sections::load(path, load_for).unwrap_or_else(|| panic!("{} loads", path.display()));
        let ctx = sections.parse().expect("a context");
        let theirs = addr2line::Loader::new(path).expect("addr2line loads it");
        let mut compared = 0;
        for &probe in probes {
            let base = nowhere(probe);
            let ours = frames_of(ctx.find_frames(probe), &base);
            let expected = frames_of(theirs.find_frames(probe).ok(), &base);
            assert_eq!(ours, expected, "{} at {probe:#x}", path.display());
            assert_eq!(ctx.find_symbol(probe), theirs.find_symbol(probe), "{} at {probe:#x}", path.display());
            compared += usize::from(!ours.is_empty());
        }
        assert!(compared > 0, "{}: no address had frames", path.display());
    }
}
