//! The example binaries (`migrate`, `server`) the tests run as an operator would.

use std::path::PathBuf;

/// The example binary `name` that cargo builds next to the test binaries.
///
/// A filtered `cargo test --test X` does not rebuild examples: build them first
/// (`cargo build --all-features --examples`) or this may be an old binary.
pub fn example_bin(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let bin = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} missing: cargo test builds examples",
        bin.display()
    );
    bin
}

/// A child process that is SIGKILLed when dropped, so a failing test leaves none behind.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL: no shutdown, no flush
        let _ = self.0.wait();
    }
}
