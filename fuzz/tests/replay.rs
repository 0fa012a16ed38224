//! The short fuzz run of CI (stable toolchain): every target over its seeds, every file kept in
//! `fuzz/regressions/<target>/` (inputs that once broke a decoder), and a fixed number of
//! mutations of the seeds drawn from a fixed seed, so a failure replays exactly.
//!
//! `SHOAL_FUZZ_ITERATIONS` changes the number of mutations per target (default 20,000);
//! `SHOAL_FUZZ_SEED` the random seed. The coverage-guided run is `scripts/fuzz.sh`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One random edit of the kinds libFuzzer makes: flip, overwrite with an interesting byte,
/// insert, delete, duplicate a slice, splice in part of another seed, truncate.
fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, other: &[u8]) {
    const INTERESTING: &[u8] = b"\0\xff\x7f\x80\n\r'\"=[].,;|-_0123456789:";
    let len = input.len();
    match rng.gen_range(0..7) {
        0 if len > 0 => {
            let i = rng.gen_range(0..len);
            input[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.gen_range(0..len);
            input[i] = INTERESTING[rng.gen_range(0..INTERESTING.len())];
        }
        2 => {
            let i = rng.gen_range(0..=len);
            input.insert(i, rng.gen());
        }
        3 if len > 0 => {
            let i = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - i).min(16));
            input.drain(i..i + n);
        }
        4 if len > 0 => {
            let i = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - i).min(64));
            let slice = input[i..i + n].to_vec();
            let at = rng.gen_range(0..=len);
            input.splice(at..at, slice);
        }
        5 if !other.is_empty() => {
            let i = rng.gen_range(0..other.len());
            let n = rng.gen_range(1..=(other.len() - i).min(64));
            let at = rng.gen_range(0..=len);
            input.splice(at..at, other[i..i + n].iter().copied());
        }
        _ if len > 0 => input.truncate(rng.gen_range(0..len)),
        _ => input.push(rng.gen()),
    }
}

fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.path(),
                std::fs::read(e.path()).expect("readable regression file"),
            )
        })
        .collect();
    out.sort();
    out
}

/// Runs `input`; on a panic, keeps the input where a developer finds it and fails loudly.
fn check(target: &shoal_fuzz::Target, what: &str, input: &[u8]) {
    let outcome = std::panic::catch_unwind(|| (target.run)(input));
    if outcome.is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}-{}", target.name, what.replace('/', "_")));
        let _ = std::fs::write(&path, input);
        panic!(
            "fuzz target {} panicked on {what}; input kept in {} (copy it to fuzz/regressions/{}/ once fixed)",
            target.name,
            path.display(),
            target.name
        );
    }
}

#[test]
fn every_target_survives_its_seeds_regressions_and_mutations() {
    let iterations = env_u64("SHOAL_FUZZ_ITERATIONS", 20_000);
    let seed = env_u64("SHOAL_FUZZ_SEED", 15);
    for target in shoal_fuzz::TARGETS {
        let started = std::time::Instant::now();
        let seeds = (target.seeds)();
        assert!(!seeds.is_empty(), "{} has no seeds", target.name);
        for (n, s) in seeds.iter().enumerate() {
            check(target, &format!("seed-{n}"), s);
        }
        for (path, input) in regressions(target.name) {
            check(target, &path.display().to_string(), &input);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        for i in 0..iterations {
            let mut input = seeds[rng.gen_range(0..seeds.len())].clone();
            let other = &seeds[rng.gen_range(0..seeds.len())];
            for _ in 0..rng.gen_range(1..=8) {
                mutate(&mut rng, &mut input, other);
            }
            check(target, &format!("mutation-{i}-seed-{seed}"), &input);
        }
        // Pure noise too.
        for i in 0..iterations / 8 {
            let len = rng.gen_range(0..512);
            let input: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            check(target, &format!("noise-{i}-seed-{seed}"), &input);
        }
        eprintln!("{}: {:?}", target.name, started.elapsed());
    }
}
