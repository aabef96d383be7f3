//! A panic inside a hook is caught there: the interposer goes passive and the host runs on,
//! untracked, to its own exit status (ARCHITECTURE.md, "What the host can notice"). The panic
//! unwinds with the interposer's own copy of libgcc's unwinder (linked in from libgcc_eh.a),
//! in hosts that never load libgcc_s: a C program and the Python interpreter. The interposer
//! panics on purpose where `RESIDUE_SELF_TEST_PANIC` asks (recording a descriptor), and prints
//! what it caught where `RESIDUE_DEBUG=1` asks.

use residue_tests::{fixture, run, Outcome};

const CAUGHT: &str = "residue: internal error, tracking stops: ";
const MESSAGE: &str = "residue self-test: a panic while recording";

/// How many panics were caught, after checking that the host ran on to exit 0.
fn caught(o: &Outcome) -> usize {
    let ctx = o.context();
    assert_eq!(o.finished.code(), 0, "the host runs on to its own exit status\n{ctx}");
    assert!(o.finished.stderr.contains(MESSAGE), "{ctx}");
    o.finished.stderr.lines().filter(|l| l.starts_with(CAUGHT)).count()
}

#[test]
fn a_panic_in_a_hook_of_a_c_host_is_caught_and_the_host_runs_on() {
    let o = run([fixture("host_handles").as_os_str(), "1".as_ref()])
        .env("RESIDUE_SELF_TEST_PANIC", "1")
        .env("RESIDUE_DEBUG", "1")
        .go();
    assert_eq!(caught(&o), 1, "one panic, caught, then nothing recorded\n{}", o.context());
}

#[test]
fn a_panic_in_a_hook_of_python_is_caught_and_the_script_runs_on() {
    let o = run(["python3", "-c", "import os; fd = os.open('/dev/null', os.O_RDONLY); os.close(fd); print('ran on')"])
        .env("RESIDUE_SELF_TEST_PANIC", "1")
        .env("RESIDUE_DEBUG", "1")
        .go();
    // python3 is a pyenv shim here, a shell script: the shell and the commands it runs each
    // panic once before the interpreter does.
    assert!(caught(&o) >= 1, "{}", o.context());
    assert_eq!(o.finished.stdout.trim(), "ran on", "{}", o.context());
}
