//! Settings shared by the property tests of every parser of untrusted bytes (the `props` test modules).
//!
//! In the test command they run a fixed number of cases from a fixed seed, so a run is repeatable and takes
//! seconds. `scripts/fuzz.sh SECONDS` runs them again and again with fresh seeds and many more cases: that is
//! the fuzzer. A failure prints the seed; `PGHERD_FUZZ_SEED=<seed> cargo test --release props::` replays it.

use proptest::test_runner::{Config, RngSeed};

/// Cases per property in the test command: enough to cover every branch the generators aim at, in seconds.
const DEFAULT_CASES: u32 = 512;
/// The test command's seed.
const DEFAULT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The proptest configuration: `PGHERD_FUZZ_CASES` and `PGHERD_FUZZ_SEED` override the defaults.
pub fn config() -> Config {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let cases = env("PGHERD_FUZZ_CASES").map_or(DEFAULT_CASES, |c| c.min(u32::MAX as u64) as u32);
    Config {
        cases,
        // Properties that skip some inputs skip more of them in long runs: the budget grows with the cases.
        max_global_rejects: cases.max(1024),
        rng_seed: RngSeed::Fixed(env("PGHERD_FUZZ_SEED").unwrap_or(DEFAULT_SEED)),
        // Failures are replayed by seed, not from files left in the tree.
        failure_persistence: None,
        ..Config::default()
    }
}
