//! The properties pbft-ci's fuzz targets check, one module per surface, and
//! the fixtures they share. The targets under `fuzz_targets/` are one line
//! each: they hand libFuzzer's bytes to [`wire::check`], [`webhook::check`],
//! [`pipeline::check`] or [`refs::check`].
//!
//! Every check asserts more than "no panic": a property the surface promises
//! (only canonical envelopes open, a decoded message survives re-encoding, a
//! webhook answered without a secret's proof never comes in, a pipeline error
//! names its line, a ref that git or we refuse is refused). A failed
//! assertion is a crash, like a panic inside the code under test.
//!
//! [`seeds::write`] writes the committed seed corpus (`fuzz/seeds/`): real
//! encoded messages of every kind, the providers' webhook fixtures, pipeline
//! files and refs.

pub mod fixture;
pub mod pipeline;
pub mod refs;
pub mod seeds;
pub mod webhook;
pub mod wire;

/// Whether `PBFT_FUZZ_VERBOSE` is set: the checks then print what each
/// input came to (which inputs of a corpus open, run, parse), for looking
/// into a corpus or a crash with `-runs=0`.
pub fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("PBFT_FUZZ_VERBOSE").is_some())
}

/// What every target runs once at start-up: fixtures built (and checked), and
/// the seed corpus written instead of fuzzing when `PBFT_FUZZ_WRITE_SEEDS`
/// names a directory.
pub fn init() {
    fixture::fixture();
    if let Some(dir) = std::env::var_os("PBFT_FUZZ_WRITE_SEEDS") {
        let n = seeds::write(std::path::Path::new(&dir)).expect("writing the seed corpus");
        eprintln!("wrote {n} seed files under {}", std::path::Path::new(&dir).display());
        std::process::exit(0);
    }
}
