//! Hostile traces: a real trace, mutated many ways, goes through the whole collector (`residue
//! report`: decoder, ledger, symbolizer, renderers). Every mutant must get an answer — a report
//! or a one-sentence error — never a panic, a signal or a hang. A bounded fuzz run: a fixed
//! seed and count, so a failure reproduces.

use std::process::Command;

use residue_tests::{fixture, raw_trace, run_captured, tools, TempDir};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One mutation of `t`: flipped bytes, a cut, a duplicated or deleted span, or a run of
/// 0xff (huge varints).
fn mutate(rng: &mut Rng, t: &[u8]) -> Vec<u8> {
    let mut m = t.to_vec();
    // Keep the header most of the time, so mutations reach the records.
    let lo = if rng.below(8) == 0 { 0 } else { 12.min(m.len()) };
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = lo + rng.below(m.len() - lo);
                m[i] = rng.next() as u8;
            }
        }
        1 => m.truncate(lo + rng.below(m.len() - lo)),
        2 => {
            let a = lo + rng.below(m.len() - lo);
            let b = (a + rng.below(256)).min(m.len());
            let span = m[a..b].to_vec();
            let at = lo + rng.below(m.len() - lo);
            m.splice(at..at, span);
        }
        3 => {
            let a = lo + rng.below(m.len() - lo);
            let b = (a + rng.below(64)).min(m.len());
            m.drain(a..b);
        }
        _ => {
            let a = lo + rng.below(m.len() - lo);
            let b = (a + 1 + rng.below(12)).min(m.len());
            m[a..b].fill(0xff);
        }
    }
    m
}

#[test]
fn mutated_real_traces_never_crash_the_collector() {
    let tmp = TempDir::new("fuzz-report");
    let trace = tmp.join("leaky.residue");
    let mut cmd = Command::new(&tools().residue);
    cmd.arg("run").arg("--output").arg(&trace).arg("--").arg(fixture("host_leaky"));
    let f = run_captured(cmd, "residue run host_leaky");
    assert_eq!(f.code(), 0, "{}", f.stderr);
    let compressed = std::fs::read(&trace).expect("reading the saved trace");
    // The records are mutated in the raw form (`residue report` reads it too): mutating the
    // compressed form mostly exercises zstd. A few compressed mutants run at the end.
    let original = raw_trace(&compressed);
    assert!(original.len() > 1000, "a real trace to mutate");

    let mut rng = Rng(0x005e_ed0f_f00d);
    let mutant = tmp.join("mutant.residue");
    let mut answered = [0u32; 3];
    for i in 0..100 {
        let m = mutate(&mut rng, &original);
        std::fs::write(&mutant, &m).expect("writing a mutant");
        let mut cmd = Command::new(&tools().residue);
        cmd.arg("report").arg(&mutant).arg("--json").arg(tmp.join("mutant.json"));
        let f = run_captured(cmd, "residue report mutant");
        let ctx = format!("mutant {i} ({} bytes): exit {}\nstderr:\n{}", m.len(), f.code(), f.stderr);
        assert!(matches!(f.code(), 0..=2), "a report (0), a partial report (1) or an error (2), nothing else\n{ctx}");
        assert!(!f.stderr.contains("panicked"), "{ctx}");
        if f.code() == 2 {
            let last = f.stderr.trim_end().lines().last().unwrap_or("");
            assert!(last.starts_with("residue"), "the error is one sentence naming residue\n{ctx}");
        }
        answered[f.code() as usize] += 1;
    }
    // The mutations reach all three outcomes, or the fuzzing is not exercising much.
    assert!(answered.iter().all(|&n| n > 0), "outcomes (ok, partial, error): {answered:?}");

    // The compressed form, mutated: still an answer, never a crash.
    for i in 0..20 {
        let m = mutate(&mut rng, &compressed);
        std::fs::write(&mutant, &m).expect("writing a mutant");
        let mut cmd = Command::new(&tools().residue);
        cmd.arg("report").arg(&mutant).arg("--json").arg(tmp.join("mutant.json"));
        let f = run_captured(cmd, "residue report compressed mutant");
        let ctx = format!("compressed mutant {i} ({} bytes): exit {}\nstderr:\n{}", m.len(), f.code(), f.stderr);
        assert!(matches!(f.code(), 0..=2), "{ctx}");
        assert!(!f.stderr.contains("panicked"), "{ctx}");
    }
}
