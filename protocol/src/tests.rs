use crate::*;

fn sample() -> (Vec<u8>, Vec<Record>) {
    let mut buf = vec![0u8; 1 << 16];
    buf[..HEADER_LEN].copy_from_slice(&header());
    let mut pos = HEADER_LEN;
    let mut e = Encoder::default();
    let argv: [&[u8]; 2] = [b"python3", b"app.py"];
    pos = e.image_start(&mut buf, pos, 42, 1, true, false, 7, b"/usr/bin/python3", &argv);
    let seg = [Segment { vaddr: 0, memsz: 4096, offset: 0, flags: 5 }];
    pos = e.module(&mut buf, pos, 3, 0x7f00_0000_0000, b"/lib/libfoo.so", &[0xab, 0xcd], &seg);
    pos = e.batch(&mut buf, pos, 1234);
    pos = e.stack(&mut buf, pos, 9, &[0x7f00_0000_1234, 0x5555_0000_0010, 0x7f00_0000_0042]);
    pos = e.stack_shared(&mut buf, pos, 10, 9, 2, &[0x7f00_0000_2000]);
    pos = e.acquire(&mut buf, pos, 100, Kind::HEAP, Api::STRDUP, 0x5555_1000, 6, 9);
    pos = e.release(&mut buf, pos, 99, Kind::FD, Api::CLOSE, 3);
    pos = e.acquire(&mut buf, pos, 1 << 40, Kind(200), Api(250), u64::MAX, u64::MAX, u32::MAX);
    pos = e.acquire(&mut buf, pos, 102, Kind::HEAP, Api::MALLOC, 0x5555_2000, 48, 10);
    pos = e.release(&mut buf, pos, 103, Kind::HEAP, Api::FREE, 0x5555_2000);
    pos = e.module_unload(&mut buf, pos, 5, 3);
    pos = e.fork(&mut buf, pos, 6, 77);
    pos = e.exec(&mut buf, pos, 7, b"/bin/true");
    pos = e.exec_failed(&mut buf, pos, 8);
    pos = e.notice(&mut buf, pos, "unicode ✓".as_bytes());
    pos = e.image_exit(&mut buf, pos, 8);
    pos = e.command(&mut buf, pos, &[b"python3", b"-c", "print('ok ✓')".as_bytes()]);
    pos = e.process_end(&mut buf, pos, 42, -3, 9);
    pos = e.describe(&mut buf, pos, 100, b"/tmp/x");
    pos = e.code(&mut buf, pos, 5, 12, b"app.py", b"Foo.bar");
    pos = e.open_at_exit(&mut buf, pos, 101, Kind::FD, 7, b"socket:[12345]");
    buf.truncate(pos);
    let expected = vec![
        Record::Header { version: VERSION },
        Record::ImageStart {
            pid: 42,
            ppid: 1,
            root: true,
            exec: false,
            time_ns: 7,
            exe: "/usr/bin/python3".into(),
            argv: vec!["python3".into(), "app.py".into()],
        },
        Record::Module {
            id: 3,
            base: 0x7f00_0000_0000,
            path: "/lib/libfoo.so".into(),
            build_id: vec![0xab, 0xcd],
            segments: vec![Segment { vaddr: 0, memsz: 4096, offset: 0, flags: 5 }],
        },
        Record::Batch { tid: 1234 },
        Record::Stack { id: 9, frames: vec![0x7f00_0000_1234, 0x5555_0000_0010, 0x7f00_0000_0042] },
        Record::StackShared { id: 10, base: 9, shared: 2, frames: vec![0x7f00_0000_2000] },
        Record::Acquire { seq: 100, kind: Kind::HEAP, api: Api::STRDUP, id: 0x5555_1000, size: 6, stack: 9 },
        Record::Release { seq: 99, kind: Kind::FD, api: Api::CLOSE, id: 3 },
        Record::Acquire { seq: 1 << 40, kind: Kind(200), api: Api(250), id: u64::MAX, size: u64::MAX, stack: u32::MAX },
        Record::Acquire { seq: 102, kind: Kind::HEAP, api: Api::MALLOC, id: 0x5555_2000, size: 48, stack: 10 },
        Record::Release { seq: 103, kind: Kind::HEAP, api: Api::FREE, id: 0x5555_2000 },
        Record::ModuleUnload { seq: 5, id: 3 },
        Record::Fork { seq: 6, child: 77 },
        Record::Exec { seq: 7, path: "/bin/true".into() },
        Record::ExecFailed { seq: 8 },
        Record::Notice { text: "unicode ✓".into() },
        Record::ImageExit { seq: 8 },
        Record::Command { argv: vec!["python3".into(), "-c".into(), "print('ok ✓')".into()] },
        Record::ProcessEnd { pid: 42, code: -3, signal: 9 },
        Record::Describe { seq: 100, text: "/tmp/x".into() },
        Record::Code { id: 5, first_line: 12, filename: "app.py".into(), name: "Foo.bar".into() },
        Record::OpenAtExit { seq: 101, kind: Kind::FD, id: 7, text: "socket:[12345]".into() },
    ];
    (buf, expected)
}

fn decode_all(buf: &[u8]) -> Result<(Vec<Record>, usize), DecodeError> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((r, n)) = d.next(&buf[pos..])? {
        out.push(r);
        pos += n;
    }
    Ok((out, pos))
}

/// As [`decode_all`], with the decoder given one byte more at a time: a record cut inside its
/// varints waits for the rest.
fn decode_byte_by_byte(stream: &[u8]) -> (Vec<Record>, usize) {
    let mut d = Decoder::new();
    let (mut at, mut got) = (0, Vec::new());
    for end in 1..=stream.len() {
        while let Some((r, n)) = d.next(&stream[at..end]).unwrap() {
            got.push(r);
            at += n;
        }
    }
    (got, at)
}

#[test]
fn round_trip() {
    let (buf, expected) = sample();
    let (got, used) = decode_all(&buf).unwrap();
    assert_eq!(got, expected);
    assert_eq!(used, buf.len());
}

#[test]
fn every_prefix_is_incomplete_not_corrupt() {
    let (buf, expected) = sample();
    for cut in 0..buf.len() {
        let (got, used) = decode_all(&buf[..cut]).unwrap_or_else(|e| panic!("prefix {cut}: {e}"));
        assert!(got.len() < expected.len());
        assert!(used <= cut);
    }
}

#[test]
fn foreign_file_and_newer_version_are_named() {
    let e = decode_all(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0").unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::NotATrace);
    assert!(e.to_string().starts_with("not a residue trace"));
    let mut h = header();
    h[8] = 99;
    let e = decode_all(&h).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::NewerVersion(99));
}

/// malloc and free, most of every stream, go without their kind and API bytes; every other
/// heap API keeps them.
#[test]
fn malloc_and_free_records_are_two_bytes_shorter() {
    let mut buf = [0u8; 64];
    // Sequence numbers that do not follow one another (another thread's events came between):
    // the records with a length and a sequence delta.
    let mut sizes = |kind: Kind, acquire: Api, release: Api| {
        let mut e = Encoder::default();
        let a = e.acquire(&mut buf, 0, 5, kind, acquire, 0x5555_2000, 48, 10);
        assert_eq!(buf[0], if (kind, acquire) == (Kind::HEAP, Api::MALLOC) { tag::MALLOC } else { tag::ACQUIRE });
        let r = e.release(&mut buf, 0, 7, kind, release, 0x5555_2000);
        assert_eq!(buf[0], if (kind, release) == (Kind::HEAP, Api::FREE) { tag::FREE } else { tag::RELEASE });
        (a, r)
    };
    let (a, r) = sizes(Kind::HEAP, Api::MALLOC, Api::FREE);
    assert_eq!(sizes(Kind::HEAP, Api::CALLOC, Api::REALLOC), (a + 2, r + 2));
    // The tag implies the kind as well: another kind's "malloc" number keeps both bytes.
    assert_eq!(sizes(Kind::FD, Api::MALLOC, Api::FREE), (a + 2, r + 2));
}

#[test]
fn unknown_tags_are_skipped() {
    let mut buf = header().to_vec();
    buf.extend_from_slice(&[0x7e, 3, 1, 2, 3]);
    let (got, _) = decode_all(&buf).unwrap();
    assert_eq!(got[1], Record::Unknown { tag: 0x7e });
}

/// Mutated streams never panic, and decoding stays bounded (the harness would abort on a
/// runaway allocation). The collector's fuzz target exercises the same entry point longer.
#[test]
fn mutations_never_panic() {
    let (buf, _) = sample();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut m = buf.clone();
        for _ in 0..1 + rand() % 4 {
            let i = (rand() as usize % (m.len() - HEADER_LEN)) + HEADER_LEN;
            m[i] = rand() as u8;
        }
        let _ = decode_all(&m);
    }
}

#[test]
fn varints_at_the_edges() {
    use crate::varint::*;
    let mut b = [0u8; 10];
    for v in [0, 1, 127, 128, u64::from(u32::MAX), u64::MAX] {
        let n = put(&mut b, 0, v);
        let mut p = 0;
        assert_eq!(get(&b[..n], &mut p), Some(v));
        assert_eq!(p, n);
    }
    // An eleventh continuation byte is rejected, not wrapped.
    let mut p = 0;
    assert_eq!(get(&[0xff; 11], &mut p), None);
    for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
        assert_eq!(unzigzag(zigzag(v)), v);
    }
}

#[test]
fn frame_tags_round_trip() {
    use crate::frame::{classify, foreign, python, Frame, MAX_CODE_ID};
    assert_eq!(classify(0x7fff_ffff_f000), Frame::Native(0x7fff_ffff_f000));
    assert_eq!(
        classify(python(MAX_CODE_ID, u32::MAX, true)),
        Frame::Python { code: MAX_CODE_ID, line: u32::MAX, entry: true }
    );
    assert_eq!(classify(python(7, 42, false)), Frame::Python { code: 7, line: 42, entry: false });
    assert_eq!(classify(foreign(0x7f00_1234_5678)), Frame::Foreign(0x7f00_1234_5678));
}

/// A malloc or free whose sequence number follows the batch's last goes without its length
/// and its sequence delta: two bytes shorter again, and decoded to the same records, whether
/// the decoder gets them whole or a byte at a time.
#[test]
fn consecutive_malloc_and_free_records_drop_their_length_and_sequence() {
    let mut buf = [0u8; 64];
    // The same two events, the second's sequence number following the first's or not.
    let mut second = |seq: u64, api: Api| {
        let mut e = Encoder::default();
        e.acquire(&mut buf, 0, 5, Kind::HEAP, Api::MALLOC, 0x5555_2000, 48, 10);
        let n = if api == Api::FREE {
            e.release(&mut buf, 0, seq, Kind::HEAP, api, 0x5555_2040)
        } else {
            e.acquire(&mut buf, 0, seq, Kind::HEAP, api, 0x5555_2040, 48, 10)
        };
        (buf[0], n)
    };
    let (far, next) = (second(7, Api::MALLOC), second(6, Api::MALLOC));
    assert_eq!((far.0, next.0, far.1 - next.1), (tag::MALLOC, tag::MALLOC_NEXT, 2));
    let (far, next) = (second(7, Api::FREE), second(6, Api::FREE));
    assert_eq!((far.0, next.0, far.1 - next.1), (tag::FREE, tag::FREE_NEXT, 2));
    // Another API keeps its full record.
    assert_eq!(second(6, Api::CALLOC).0, tag::ACQUIRE);

    let mut stream = header().to_vec();
    let mut b = [0u8; 256];
    let mut e = Encoder::default();
    let mut p = e.batch(&mut b, 0, 9);
    p = e.acquire(&mut b, p, 1, Kind::HEAP, Api::MALLOC, 0x7f00_0000_1000, 300, 4);
    p = e.acquire(&mut b, p, 2, Kind::HEAP, Api::MALLOC, 0x7f00_0000_0800, 1 << 40, 70_000);
    p = e.release(&mut b, p, 3, Kind::HEAP, Api::FREE, 0x7f00_0000_1000);
    p = e.release(&mut b, p, 9, Kind::HEAP, Api::FREE, 0x7f00_0000_0800);
    stream.extend_from_slice(&b[..p]);
    let want = vec![
        Record::Header { version: VERSION },
        Record::Batch { tid: 9 },
        Record::Acquire { seq: 1, kind: Kind::HEAP, api: Api::MALLOC, id: 0x7f00_0000_1000, size: 300, stack: 4 },
        Record::Acquire {
            seq: 2,
            kind: Kind::HEAP,
            api: Api::MALLOC,
            id: 0x7f00_0000_0800,
            size: 1 << 40,
            stack: 70_000,
        },
        Record::Release { seq: 3, kind: Kind::HEAP, api: Api::FREE, id: 0x7f00_0000_1000 },
        Record::Release { seq: 9, kind: Kind::HEAP, api: Api::FREE, id: 0x7f00_0000_0800 },
    ];
    let (got, _) = decode_all(&stream).unwrap();
    assert_eq!(got, want);
    // Fed one byte more at a time.
    assert_eq!(decode_byte_by_byte(&stream), (want, stream.len()));
}

/// A stream of version 2, which has no length-less records, still decodes.
#[test]
fn version_2_streams_still_decode() {
    let mut stream = header().to_vec();
    stream[8..10].copy_from_slice(&2u16.to_le_bytes());
    // A malloc and a free as version 2 wrote them: tag, length, sequence delta, id delta, ...
    stream.extend_from_slice(&[tag::BATCH, 1, 9, tag::MALLOC, 5, 2, 0x80, 0x01, 48, 3, tag::FREE, 2, 2, 0]);
    let (got, _) = decode_all(&stream).unwrap();
    assert_eq!(
        got,
        vec![
            Record::Header { version: 2 },
            Record::Batch { tid: 9 },
            Record::Acquire { seq: 1, kind: Kind::HEAP, api: Api::MALLOC, id: 64, size: 48, stack: 3 },
            Record::Release { seq: 2, kind: Kind::HEAP, api: Api::FREE, id: 64 },
        ]
    );
}

/// A loop's pairs, as a C program makes them (each place frees its block of the turn before,
/// and malloc hands the same block straight back): a free of one of the batch's four latest
/// acquisitions is its tag alone, a malloc of the block just freed has no id; both decode to
/// the same records, whole or a byte at a time, and a new batch forgets the latest
/// acquisitions of the one before.
#[test]
fn a_loops_frees_and_mallocs_of_recent_blocks_are_a_byte_or_two() {
    let blocks = [0x5555_0000_1000u64, 0x5555_0000_2040, 0x5555_0000_0470, 0x5555_0000_9990];
    let mut b = vec![0u8; 4096];
    let mut e = Encoder::default();
    let mut want = vec![Record::Header { version: VERSION }, Record::Batch { tid: 3 }];
    let mut p = e.batch(&mut b, 0, 3);
    let mut seq = 0;
    // Where each record starts.
    let mut tags = Vec::new();
    for (k, &id) in blocks.iter().enumerate() {
        seq += 1;
        tags.push(p);
        p = e.acquire(&mut b, p, seq, Kind::HEAP, Api::MALLOC, id, 16 + k as u64, 7);
        want.push(Record::Acquire { seq, kind: Kind::HEAP, api: Api::MALLOC, id, size: 16 + k as u64, stack: 7 });
    }
    let start = p;
    for turn in 0..8 {
        let id = blocks[turn % 4];
        seq += 1;
        tags.push(p);
        p = e.release(&mut b, p, seq, Kind::HEAP, Api::FREE, id);
        want.push(Record::Release { seq, kind: Kind::HEAP, api: Api::FREE, id });
        seq += 1;
        tags.push(p);
        p = e.acquire(&mut b, p, seq, Kind::HEAP, Api::MALLOC, id, 16, 7);
        want.push(Record::Acquire { seq, kind: Kind::HEAP, api: Api::MALLOC, id, size: 16, stack: 7 });
    }
    // Each pair: the free's tag, the malloc's tag, its size and stack.
    let tags: Vec<u8> = tags.iter().map(|&at| b[at]).collect();
    assert_eq!(p - start, 8 * 4, "tags: {tags:x?}");
    assert!(tags[4..].iter().step_by(2).all(|&t| (tag::FREE_RECENT..=tag::FREE_RECENT_LAST).contains(&t)));
    assert!(tags[5..].iter().step_by(2).all(|&t| t == tag::MALLOC_SAME), "tags: {tags:x?}");
    // One acquisition more (of another API: a full record), so that the places of the batch's
    // latest acquisitions have moved round by other than whole turns.
    seq += 1;
    p = e.acquire(&mut b, p, seq, Kind::HEAP, Api::CALLOC, 0x5555_0000_5000, 64, 7);
    want.push(Record::Acquire { seq, kind: Kind::HEAP, api: Api::CALLOC, id: 0x5555_0000_5000, size: 64, stack: 7 });
    // A new batch: the block acquired before it is freed with its id delta, one acquired in
    // it by its place; a free out of sequence keeps its full record.
    p = e.batch(&mut b, p, 4);
    want.push(Record::Batch { tid: 4 });
    let fresh = 0x5555_0000_3000;
    p = e.acquire(&mut b, p, seq + 1, Kind::HEAP, Api::MALLOC, fresh, 32, 8);
    want.push(Record::Acquire { seq: seq + 1, kind: Kind::HEAP, api: Api::MALLOC, id: fresh, size: 32, stack: 8 });
    let old_at = p;
    p = e.release(&mut b, p, seq + 2, Kind::HEAP, Api::FREE, blocks[0]);
    want.push(Record::Release { seq: seq + 2, kind: Kind::HEAP, api: Api::FREE, id: blocks[0] });
    assert_eq!(b[old_at], tag::FREE_NEXT, "a free of a block of the batch before is a delta");
    p = e.release(&mut b, p, seq + 3, Kind::HEAP, Api::FREE, fresh);
    want.push(Record::Release { seq: seq + 3, kind: Kind::HEAP, api: Api::FREE, id: fresh });
    assert_eq!(b[p - 1], tag::FREE_RECENT, "the batch's first acquisition, in place 0");
    p = e.release(&mut b, p, seq + 9, Kind::HEAP, Api::FREE, blocks[1]);
    want.push(Record::Release { seq: seq + 9, kind: Kind::HEAP, api: Api::FREE, id: blocks[1] });

    let mut stream = header().to_vec();
    stream.extend_from_slice(&b[..p]);
    let (got, _) = decode_all(&stream).unwrap();
    assert_eq!(got, want);
    assert_eq!(decode_byte_by_byte(&stream), (want, stream.len()));
}
