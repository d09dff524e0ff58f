//! The fuzz targets of `fuzz/` on stable Rust, for a bounded time in CI.
//!
//! libFuzzer needs a nightly toolchain; these tests run the very same target bodies
//! (`fuzz/src/lib.rs`, included below) in a seeded mutation loop: inputs from a corpus of
//! valid ones, mutated by bit flips, interesting bytes, insertions of format tokens,
//! deletions, truncations and splices. An input whose outcome (its error message with the
//! numbers and quoted values taken out) has not been seen yet joins the corpus, a coarse
//! stand-in for coverage feedback. Every call runs under `catch_unwind`; a panic is a
//! finding, and so is a decode that allocates more than a bounded amount.
//!
//! Budget per target: `FLEETMAP_FUZZ_SECONDS` (default 20) or `FLEETMAP_FUZZ_ITERATIONS`
//! (default 200,000), whichever ends first. `FLEETMAP_FUZZ_SEED` picks the sequence
//! (default fixed, so CI is repeatable). A finding fails the test naming the seed and the
//! iteration, and saves the input to a file that `cargo +nightly fuzz run <target> <file>`
//! replays (`manifest`, or `decode` for both the decode and the round-trip campaigns).

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use fleetmap_protocol::{ItemMessage, Kind, OutcomeMessage, WIRE_VERSION};
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};

/// Most bytes one decode may hold at once. bincode refuses length prefixes past the
/// 64 KiB message limit, but serde pre-sizes a sequence from its claimed length up to
/// 1 MiB before reading it; anything above this is a decoder that trusts hostile bytes.
const DECODE_ALLOC_LIMIT: isize = 2 * 1024 * 1024;
/// Inputs and corpus stay small: big inputs only make each iteration slower.
const MAX_INPUT: usize = 8 * 1024;
const MAX_CORPUS: usize = 4096;

#[global_allocator]
static ALLOC: Counting = Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting the bytes each thread holds and the most it held.
struct Counting;

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        q
    }
}

/// The most bytes this thread held above its starting point while `f` ran.
fn peak_alloc(f: impl FnOnce()) -> isize {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    f();
    PEAK.with(Cell::get) - start
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One fuzz campaign: a target, its starting corpus and the tokens its format is made of.
struct Campaign {
    name: &'static str,
    target: fn(&[u8]) -> String,
    corpus: Vec<Vec<u8>>,
    tokens: &'static [&'static [u8]],
    /// An extra property checked on every input, outside the target (e.g. allocation).
    check: fn(&[u8]),
}

#[derive(Debug)]
struct Summary {
    iterations: u64,
    elapsed: Duration,
    outcomes: usize,
    corpus: usize,
}

impl Campaign {
    fn run(mut self) -> Summary {
        let seed: u64 = env_or("FLEETMAP_FUZZ_SEED", 0x5EED_F1EE_7A11_u64);
        let budget = Duration::from_secs(env_or("FLEETMAP_FUZZ_SECONDS", 20));
        let max_iterations: u64 = env_or("FLEETMAP_FUZZ_ITERATIONS", 200_000);
        let mut rng = SmallRng::seed_from_u64(seed ^ fnv(self.name.as_bytes()));
        let mut outcomes = HashSet::new();
        let started = Instant::now();
        let mut iterations = 0;
        // The corpus as given runs first, unmutated.
        let mut queue: Vec<Vec<u8>> = self.corpus.clone();
        while iterations < max_iterations && started.elapsed() < budget {
            let input = queue.pop().unwrap_or_else(|| self.mutant(&mut rng));
            let (target, check) = (self.target, self.check);
            let ran = catch_unwind(AssertUnwindSafe(|| {
                let outcome = target(&input);
                check(&input);
                outcome
            }));
            match ran {
                Ok(outcome) => {
                    if outcomes.insert(shape(&outcome)) && self.corpus.len() < MAX_CORPUS {
                        self.corpus.push(input);
                    }
                }
                Err(panic) => self.report(seed, iterations, &input, panic.as_ref()),
            }
            iterations += 1;
        }
        let summary = Summary {
            iterations,
            elapsed: started.elapsed(),
            outcomes: outcomes.len(),
            corpus: self.corpus.len(),
        };
        eprintln!(
            "fuzz {} (seed {seed:#x}): {} inputs in {:.1?}, {} kinds of outcome, corpus of {}",
            self.name, summary.iterations, summary.elapsed, summary.outcomes, summary.corpus
        );
        if std::env::var_os("FLEETMAP_FUZZ_SHOW").is_some() {
            let mut all: Vec<_> = outcomes.into_iter().collect();
            all.sort();
            eprintln!("{}", all.join("\n"));
        }
        summary
    }

    /// A corpus entry changed by one to four random edits.
    fn mutant(&self, rng: &mut SmallRng) -> Vec<u8> {
        let mut x = self.corpus.choose(rng).cloned().unwrap_or_default();
        for _ in 0..rng.random_range(1..=4) {
            let at = |rng: &mut SmallRng, x: &Vec<u8>| rng.random_range(0..=x.len());
            match rng.random_range(0..9) {
                0 if !x.is_empty() => {
                    let i = rng.random_range(0..x.len());
                    x[i] ^= 1 << rng.random_range(0..8);
                }
                1 if !x.is_empty() => {
                    const INTERESTING: [u8; 12] = [
                        0, 1, 0x7f, 0x80, 0xff, b'\n', b'\r', b'"', b'/', b' ', 0xfb, 0xfd,
                    ];
                    let i = rng.random_range(0..x.len());
                    x[i] = *INTERESTING.choose(rng).unwrap_or(&0);
                }
                2 => {
                    let i = at(rng, &x);
                    let n = rng.random_range(1..=8);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                    x.splice(i..i, bytes);
                }
                3 if !x.is_empty() => {
                    let i = rng.random_range(0..x.len());
                    let n = rng.random_range(1..=(x.len() - i).min(32));
                    x.drain(i..i + n);
                }
                4 => {
                    let n = at(rng, &x);
                    x.truncate(n);
                }
                5 | 6 => {
                    let i = at(rng, &x);
                    let token = self.tokens.choose(rng).copied().unwrap_or(b"");
                    x.splice(i..i, token.iter().copied());
                }
                7 => {
                    // Splice: this input's head, another's tail.
                    let other = self.corpus.choose(rng).cloned().unwrap_or_default();
                    let (i, j) = (at(rng, &x), rng.random_range(0..=other.len()));
                    x.truncate(i);
                    x.extend_from_slice(&other[j..]);
                }
                _ if !x.is_empty() => {
                    // Repeat a run of bytes: more lines, longer strings, nested lengths.
                    let i = rng.random_range(0..x.len());
                    let n = rng.random_range(1..=(x.len() - i).min(64));
                    let run = x[i..i + n].to_vec();
                    for _ in 0..rng.random_range(1..=4) {
                        x.splice(i..i, run.iter().copied());
                    }
                }
                _ => x.push(rng.random()),
            }
        }
        x.truncate(MAX_INPUT);
        x
    }

    fn report(
        &self,
        seed: u64,
        iteration: u64,
        input: &[u8],
        panic: &(dyn std::any::Any + Send),
    ) -> ! {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(non-string panic)");
        let message: String = message.chars().take(4000).collect();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke");
        let file = dir.join(format!("{}-{seed:x}-{iteration}", self.name));
        let saved = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&file, input))
            .map(|()| file.display().to_string())
            .unwrap_or_else(|e| format!("(not saved: {e})"));
        let shown: String = input
            .escape_ascii()
            .to_string()
            .chars()
            .take(2000)
            .collect();
        panic!(
            "fuzz target {} failed at iteration {iteration} (FLEETMAP_FUZZ_SEED={seed}): \
             {message}\ninput, {} bytes, saved to {saved}:\n{shown}",
            self.name,
            input.len()
        );
    }
}

/// An outcome with its particulars taken out (URIs, quoted and bracketed values, numbers
/// but for their magnitude), so "line 6" and "line 7" of the same error count once.
fn shape(outcome: &str) -> String {
    let mut bare = String::with_capacity(outcome.len());
    let mut quote = None;
    let mut escaped = false;
    let mut depth = 0u32;
    for c in outcome.chars() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => depth = depth.saturating_sub(1),
            (None, _) if depth == 0 => bare.push(c),
            (None, _) => {}
        }
    }
    // Words stay, numbers count by order of magnitude, anything else (URIs) goes.
    let words = bare.split_whitespace().filter_map(|w| {
        let w = w.trim_end_matches([',', '.', ':', ';', ')']);
        if let Ok(n) = w.parse::<u64>() {
            Some(format!("~2^{}", u64::BITS - n.leading_zeros()))
        } else {
            let word = !w.is_empty() && w.chars().all(|c| c.is_ascii_alphabetic());
            word.then(|| w.to_owned())
        }
    });
    words.collect::<Vec<_>>().join(" ")
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn no_check(_: &[u8]) {}

static MOST_HELD_BY_A_DECODE: AtomicIsize = AtomicIsize::new(0);

/// Decoding any bytes, bare or behind a valid header, holds at most
/// [`DECODE_ALLOC_LIMIT`] bytes at once.
fn decode_allocation_is_bounded(data: &[u8]) {
    let framed: Vec<Vec<u8>> = [Kind::Item, Kind::Outcome, Kind::ItemPack, Kind::OutcomePack]
        .iter()
        .map(|&k| [&[b'F', b'M', WIRE_VERSION, k as u8][..], data].concat())
        .collect();
    for bytes in std::iter::once(data).chain(framed.iter().map(Vec::as_slice)) {
        let peak = peak_alloc(|| {
            let _ = ItemMessage::decode(bytes);
            let _ = OutcomeMessage::decode(bytes);
            let _ = fleetmap_protocol::Items::decode(bytes);
            let _ = fleetmap_protocol::decode_outcomes(bytes);
        });
        MOST_HELD_BY_A_DECODE.fetch_max(peak, Ordering::Relaxed);
        assert!(
            peak <= DECODE_ALLOC_LIMIT,
            "decoding {} bytes held {peak} bytes at once",
            bytes.len()
        );
    }
}

fn manifest_corpus() -> Vec<Vec<u8>> {
    let athena: String = (0..20)
        .map(|i| {
            format!(
                "s3://fleetmap-data/iot-unload/deviceid_partition=sensor-{i:03}/\
                 20240115_000000_00042_abcde_{i:04x}\n"
            )
        })
        .collect();
    let long = format!("s3://fleetmap-data/{}\n", "k".repeat(1020));
    [
        &b"s3://fleetmap-data/a/part-1\ns3://fleetmap-data/a/part-2\n"[..],
        b"\xEF\xBB\xBFs3://data-1/x/1\r\n\r\n  \"s3://data-1/x/2\"  \r\n\n\n",
        b"s3://fleetmap-data/x/1\nhttps://example.com/x\n",
        b"s3://fleetmap-data/x/1\ns3://fleetmap-data/x/2\ns3://fleetmap-data/x/1\n",
        b"\r\n\n  \n",
        b"",
        b"s3://fleetmap-data/folder/\n",
        b"s3://Bad_Bucket/k\ns3://a..b/k\ns3://ab/k\ns3://bucket\n",
        "s3://fleetmap-data/ключ/é €/\u{1F600}\ts3://x\n".as_bytes(),
        b"s3://fleetmap-data/x/1",
        athena.as_bytes(),
        long.as_bytes(),
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect()
}

const MANIFEST_TOKENS: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\r",
    b"\xEF\xBB\xBF",
    b"s3://",
    b"\"",
    b"/",
    b" ",
    b"\t",
    b"s3://fleetmap-data/",
    b"s3://fleetmap-data/a/part-1\n",
    b"..",
    b"\xC2\xA0",
    b"\xE3\x80\x80",
    b"\xFF",
    b"\xEF\xBB",
];

/// Valid encodings of messages built from random recipes: every field shape, bare and
/// with a body only.
fn message_corpus(rng: &mut SmallRng) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..64 {
        let mut recipe = vec![0u8; rng.random_range(16..400)];
        rng.fill_bytes(&mut recipe);
        let (item, outcome) = targets::messages(&recipe);
        out.extend(item.encode().ok().filter(|b| b.len() <= MAX_INPUT));
        out.extend(outcome.encode().ok().filter(|b| b.len() <= MAX_INPUT));
    }
    let bodies: Vec<Vec<u8>> = out.iter().map(|b| b[4..].to_vec()).collect();
    out.extend(bodies);
    out
}

const MESSAGE_TOKENS: &[&[u8]] = &[
    b"FM",
    &[b'F', b'M', WIRE_VERSION, 1],
    &[b'F', b'M', WIRE_VERSION, 2],
    &[b'F', b'M', WIRE_VERSION + 1, 1],
    &[0xfb],
    &[0xfc],
    &[0xfd],
    &[0xfe],
    &[0xfb, 0xff, 0xff],
    &[0xfc, 0xff, 0xff, 0xff, 0x7f],
    &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f],
    &[0, 0, 0, 0, 0, 0, 0xf8, 0x7f],
    &[0xff; 8],
    &[0],
    &[1],
    &[2],
];

fn recipe_corpus(rng: &mut SmallRng) -> Vec<Vec<u8>> {
    (0..64)
        .map(|_| {
            let mut r = vec![0u8; rng.random_range(0..600)];
            rng.fill_bytes(&mut r);
            r
        })
        .collect()
}

const RECIPE_TOKENS: &[&[u8]] = &[&[0xff], &[0xfe], &[0xf0, 0xff, 0xff], &[0x80], &[0xbf]];

/// A campaign that ran too few iterations has not fuzzed anything: the budget or the
/// machine is wrong, and a green result would mean nothing.
fn assert_fuzzed(s: &Summary) {
    let wanted = env_or("FLEETMAP_FUZZ_ITERATIONS", 200_000u64).min(2_000);
    assert!(s.iterations >= wanted, "only {s:?}");
    assert!(s.outcomes > 10, "the corpus explores almost nothing: {s:?}");
}

#[test]
fn manifest_parser_survives_mutated_manifests() {
    let s = Campaign {
        name: "manifest",
        target: targets::manifest,
        corpus: manifest_corpus(),
        tokens: MANIFEST_TOKENS,
        check: no_check,
    }
    .run();
    assert_fuzzed(&s);
}

#[test]
fn decoder_survives_mutated_messages_with_bounded_allocation() {
    let mut rng = SmallRng::seed_from_u64(1);
    let s = Campaign {
        name: "decode",
        target: targets::decode,
        corpus: message_corpus(&mut rng),
        tokens: MESSAGE_TOKENS,
        check: decode_allocation_is_bounded,
    }
    .run();
    eprintln!(
        "the most bytes one decode held: {}",
        MOST_HELD_BY_A_DECODE.load(Ordering::Relaxed)
    );
    assert_fuzzed(&s);
}

#[test]
fn random_messages_round_trip_through_the_wire_format() {
    let mut rng = SmallRng::seed_from_u64(2);
    let s = Campaign {
        name: "round_trip",
        target: targets::round_trip,
        corpus: recipe_corpus(&mut rng),
        tokens: RECIPE_TOKENS,
        check: no_check,
    }
    .run();
    assert_fuzzed(&s);
}

/// The allocation bound is not vacuous: the counter sees what a thread holds, and a
/// 26-byte outcome whose devices list claims 2^62 entries stays under the bound (serde
/// pre-sizes the list to at most 1 MiB before finding the bytes missing).
#[test]
fn allocation_counter_sees_a_hostile_length_prefix() {
    assert!(peak_alloc(|| drop(vec![1u8; 100_000])) >= 100_000);

    let mut outcome = vec![b'F', b'M', WIRE_VERSION, Kind::Outcome as u8];
    // run_id "", execution, attempt, worker_id "", started, finished, bytes_read,
    // Succeeded, readings, the four counts: all 0. Then devices: a length of 2^62.
    outcome.extend_from_slice(&[0; 13]);
    outcome.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40]);
    let mut decoded = None;
    let peak = peak_alloc(|| decoded = Some(OutcomeMessage::decode(&outcome)));
    let err = decoded
        .and_then(Result::err)
        .expect("2^62 devices do not decode");
    assert!(err.to_string().contains("not a valid Outcome"), "{err}");
    assert!(peak <= DECODE_ALLOC_LIMIT, "{peak} bytes");
    eprintln!("a 2^62-device claim made the decoder hold {peak} bytes");
}

/// Found by the round-trip campaign: `encode` checks the wire size against the 64 KiB
/// limit, but the decoder's limit counts decoded memory (8 bytes for every varint, however
/// short), so a message just under the limit encodes and then cannot be decoded: the
/// coordinator would dead-letter an outcome the worker published successfully.
#[test]
fn a_message_that_encodes_within_the_limit_also_decodes() {
    let outcome = OutcomeMessage {
        run_id: "r".into(),
        execution: 1,
        attempt: 1,
        worker_id: "w".into(),
        started_ms: 0,
        finished_ms: 0,
        bytes_read: 0,
        status: fleetmap_protocol::ItemStatus::Failed {
            error: "States.TaskFailed".into(),
            cause: "x".repeat(65_450),
        },
    };
    let bytes = outcome.encode().expect("within the limit");
    assert!(bytes.len() <= fleetmap_protocol::MAX_MESSAGE_BYTES);
    match OutcomeMessage::decode(&bytes) {
        Ok(back) => assert_eq!(back, outcome),
        Err(e) => panic!(
            "a {}-byte outcome encodes but does not decode: {e}",
            bytes.len()
        ),
    }
}
