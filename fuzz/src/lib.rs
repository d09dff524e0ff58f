//! Fuzz targets for the two places fleetmap parses untrusted bytes: the Athena manifest
//! (coordinator) and the item / outcome wire format (protocol).
//!
//! Each target is a plain function of its input, so one body serves two drivers: libFuzzer
//! through `cargo +nightly fuzz run <target>` (the thin wrappers in `fuzz_targets/`), and a
//! seeded mutation loop on stable Rust that CI runs for a bounded time
//! (`tests/tests/fuzz_smoke.rs`, which includes this file with `#[path]`: keep it free of
//! crate-level attributes and of dependencies beyond the coordinator, objstore and protocol).
//!
//! A target panics only on a finding: the code under test panicked, or a property checked
//! here does not hold. Otherwise it returns a description of what the input did (the error
//! message, or what decoded), which the stable driver uses as coarse feedback.

use std::collections::HashSet;
use std::fmt::Debug;

use fleetmap_coordinator::manifest::{
    MAX_LINE_BYTES, ManifestError, ManifestParser, parse_manifest,
};
use fleetmap_objstore::S3Uri;
use fleetmap_protocol::{
    AnomalyCounts, DecodeError, DeviceAnomalies, EncodeError, InputType, ItemMessage, ItemStatus,
    Kind, MAX_MESSAGE_BYTES, OutcomeMessage, ResultTarget, Thresholds, WIRE_VERSION,
};

/// The name the manifest target gives its input; every manifest error must carry it.
pub const MANIFEST_URI: &str = "s3://fuzz-bucket/manifests/fuzz.csv";

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses `data` as a manifest. Properties:
/// - a success lists distinct objects (a key, not a folder), at most one per line, and the
///   list written back out (quoted, one per line) parses to the same list;
/// - an error names the manifest; a line error names a line that exists; "lists no objects"
///   only when every line is blank;
/// - the same lines pushed one at a time without their `\n`, with CRLF line ends, or behind
///   a BOM give the same answer (the same objects, or the same error at the same line).
pub fn manifest(data: &[u8]) -> String {
    let got = parse_manifest(MANIFEST_URI, data);
    let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
    match &got {
        Ok(uris) => check_listed(uris, lines.len()),
        Err(e) => check_manifest_error(e, &lines),
    }

    // The variants add up to three bytes to a line; stay clear of the length limit.
    if lines.iter().all(|l| l.len() + BOM.len() < MAX_LINE_BYTES) {
        let mut streamed = ManifestParser::new(MANIFEST_URI);
        let pushed = lines.iter().try_for_each(|l| {
            let l = l.strip_suffix(b"\n").unwrap_or(l);
            streamed.push_line(l)
        });
        let streamed = pushed.and_then(|()| streamed.finish());
        assert_same_answer("lines without their \\n", &got, &streamed);

        let mut crlf = Vec::with_capacity(data.len() + lines.len());
        for &b in data {
            if b == b'\n' {
                crlf.push(b'\r');
            }
            crlf.push(b);
        }
        assert_same_answer("CRLF line ends", &got, &parse_manifest(MANIFEST_URI, &crlf));

        if !data.starts_with(BOM) {
            let bom = [BOM, data].concat();
            assert_same_answer("a leading BOM", &got, &parse_manifest(MANIFEST_URI, &bom));
        }
    }
    match got {
        Ok(uris) => format!("ok: {} objects", uris.len()),
        Err(e) => e.to_string(),
    }
}

fn check_listed(uris: &[S3Uri], lines: usize) {
    assert!(!uris.is_empty(), "an empty list was returned as a success");
    assert!(
        uris.len() <= lines,
        "{} objects from {lines} lines",
        uris.len()
    );
    let mut seen = HashSet::new();
    for u in uris {
        assert!(
            !u.key.is_empty() && !u.key.ends_with('/'),
            "folder listed: {u}"
        );
        assert!(seen.insert(u), "listed twice: {u}");
    }
    let rendered: String = uris.iter().map(|u| format!("\"{u}\"\n")).collect();
    match parse_manifest(MANIFEST_URI, rendered.as_bytes()) {
        Ok(again) => assert_eq!(again, uris, "the list written back parses differently"),
        Err(e) => panic!("the list written back out does not parse: {e}\n{rendered}"),
    }
}

fn check_manifest_error(e: &ManifestError, lines: &[&[u8]]) {
    let text = e.to_string();
    assert!(
        text.contains(MANIFEST_URI),
        "error does not name the manifest: {text}"
    );
    let n = lines.len() as u64;
    match e {
        ManifestError::BadLine { line, reason, .. } => {
            assert!((1..=n).contains(line), "line {line} of {n}: {text}");
            assert!(!reason.is_empty(), "no reason: {text}");
        }
        ManifestError::Duplicate {
            line, first_line, ..
        } => {
            assert!(
                (1..*line).contains(first_line) && *line <= n,
                "lines {first_line} and {line} of {n}: {text}"
            );
        }
        ManifestError::Empty { .. } => {
            for (i, l) in lines.iter().enumerate() {
                let l = if i == 0 {
                    l.strip_prefix(BOM).unwrap_or(l)
                } else {
                    l
                };
                let blank = std::str::from_utf8(l).is_ok_and(|s| s.trim().is_empty());
                assert!(
                    blank,
                    "\"lists no objects\" but line {} is not blank",
                    i + 1
                );
            }
        }
    }
}

/// The same objects, or an error of the same kind at the same line (reasons may differ in
/// detail, e.g. a UTF-8 error's wording at the end of a line).
fn assert_same_answer(
    variant: &str,
    a: &Result<Vec<S3Uri>, ManifestError>,
    b: &Result<Vec<S3Uri>, ManifestError>,
) {
    let same = match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (
            Err(ManifestError::BadLine { line: x, .. }),
            Err(ManifestError::BadLine { line: y, .. }),
        ) => x == y,
        (Err(x @ ManifestError::Duplicate { .. }), Err(y @ ManifestError::Duplicate { .. })) => {
            x == y
        }
        (Err(ManifestError::Empty { .. }), Err(ManifestError::Empty { .. })) => true,
        _ => false,
    };
    assert!(same, "{variant} changed the answer:\n  {a:?}\n  {b:?}");
}

/// Decodes `data` as both message kinds, as it is and behind a valid envelope header (so
/// mutations reach the bincode body). Properties: at most one kind decodes; a decoded
/// message re-encodes within the size limit to bytes that decode to it again; errors are
/// values with a message, never panics.
pub fn decode(data: &[u8]) -> String {
    let mut out = decode_both(data);
    if data.len() + 4 <= MAX_MESSAGE_BYTES {
        for kind in [Kind::Item, Kind::Outcome, Kind::ItemPack, Kind::OutcomePack] {
            let framed = [&[b'F', b'M', WIRE_VERSION, kind as u8][..], data].concat();
            out.push_str(" | ");
            out.push_str(&decode_both(&framed));
        }
    }
    out
}

fn decode_both(data: &[u8]) -> String {
    let item = ItemMessage::decode(data);
    let outcome = OutcomeMessage::decode(data);
    assert!(
        item.is_err() || outcome.is_err(),
        "the same bytes decode as an item and as an outcome"
    );
    let items = fleetmap_protocol::Items::decode(data);
    let outcomes = fleetmap_protocol::decode_outcomes(data);
    assert!(
        items.is_err() || outcomes.is_err(),
        "the same bytes decode as items and as outcomes"
    );
    let packs = format!(
        "items: {}; outcomes: {}",
        items.map_or_else(
            |e| e.to_string(),
            |i| format!("{} child(ren)", i.into_items().len())
        ),
        outcomes.map_or_else(|e| e.to_string(), |o| format!("{} outcome(s)", o.len()))
    );
    if data.len() > MAX_MESSAGE_BYTES {
        assert!(
            matches!(item, Err(DecodeError::TooLarge { .. })),
            "{item:?}"
        );
    }
    let item = re_encodes(data, item, ItemMessage::encode, ItemMessage::decode);
    let outcome = re_encodes(
        data,
        outcome,
        OutcomeMessage::encode,
        OutcomeMessage::decode,
    );
    format!("item: {item}; outcome: {outcome}; {packs}")
}

fn re_encodes<T: Debug>(
    data: &[u8],
    decoded: Result<T, DecodeError>,
    encode: fn(&T) -> Result<Vec<u8>, EncodeError>,
    decode: fn(&[u8]) -> Result<T, DecodeError>,
) -> String {
    let msg = match decoded {
        Ok(msg) => msg,
        Err(e) => {
            let text = e.to_string();
            assert!(!text.is_empty(), "{e:?} has no message");
            return text;
        }
    };
    let bytes =
        encode(&msg).unwrap_or_else(|e| panic!("decoded {} does not re-encode: {e}", brief(&msg)));
    assert!(
        bytes.len() <= data.len(),
        "{} bytes re-encode to {}",
        data.len(),
        bytes.len()
    );
    let again = decode(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded {} does not decode: {e}", brief(&msg)));
    let bytes_again = encode(&again).expect("encodes once, encodes twice");
    assert_eq!(
        bytes,
        bytes_again,
        "decode(encode(x)) differs from x: {}",
        brief(&msg)
    );
    if bytes == data {
        "ok"
    } else {
        "ok, non-canonical"
    }
    .to_owned()
}

/// Reads `data` as a recipe for an item and an outcome with arbitrary field values (NaN,
/// extreme integers, multi-byte and oversized strings, hundreds of devices) and checks
/// `decode(encode(x)) == x`: a message that encodes at all decodes to itself, under the
/// size limit, and not as the other kind; any truncation of it fails to decode.
pub fn round_trip(data: &[u8]) -> String {
    let mut r = Recipe { data, pos: 0 };
    let item = r.item();
    let outcome = r.outcome();
    let cut = usize::from(r.byte()) << 8 | usize::from(r.byte());
    let comparable = [
        item.thresholds.temperature_high,
        item.thresholds.temperature_low,
        item.thresholds.humidity_high,
        item.thresholds.humidity_low,
        item.thresholds.battery_low,
    ]
    .iter()
    .all(|v| !v.is_nan());
    let a = survives(
        &item,
        ItemMessage::encode,
        ItemMessage::decode,
        comparable,
        cut,
    );
    let b = survives(
        &outcome,
        OutcomeMessage::encode,
        OutcomeMessage::decode,
        true,
        cut,
    );
    let status = match &outcome.status {
        ItemStatus::Succeeded { devices, .. } => format!("succeeded, {} devices", devices.len()),
        ItemStatus::Failed { .. } => "failed".to_owned(),
    };
    if let Ok(bytes) = outcome.encode() {
        let as_item = ItemMessage::decode(&bytes);
        assert!(
            matches!(as_item, Err(DecodeError::WrongKind { got: 2, .. })),
            "an outcome read as an item: {as_item:?}"
        );
    }
    format!("item: {a}; outcome ({status}): {b}")
}

fn survives<T: PartialEq + Debug>(
    x: &T,
    encode: fn(&T) -> Result<Vec<u8>, EncodeError>,
    decode: fn(&[u8]) -> Result<T, DecodeError>,
    comparable: bool,
    cut: usize,
) -> String {
    let bytes = match encode(x) {
        Ok(bytes) => bytes,
        Err(EncodeError::TooLarge { len, .. }) => {
            assert!(len > MAX_MESSAGE_BYTES, "refused {len} bytes as too large");
            return "too large".to_owned();
        }
        Err(e) => panic!("encoding {} failed: {e}", brief(x)),
    };
    assert!(bytes.len() <= MAX_MESSAGE_BYTES);
    let y = decode(&bytes).unwrap_or_else(|e| {
        panic!(
            "{} encodes to {} bytes but does not decode: {e}",
            brief(x),
            bytes.len()
        )
    });
    if comparable {
        assert_eq!(&y, x, "decode(encode(x)) != x");
    }
    assert_eq!(
        encode(&y).ok(),
        Some(bytes.clone()),
        "NaN bits or a field changed"
    );
    let cut = cut % bytes.len();
    assert!(
        decode(&bytes[..cut]).is_err(),
        "the first {cut} of {} bytes decode",
        bytes.len()
    );
    format!("ok, {} bytes", bytes.len())
}

/// A message's `Debug` cut short: a finding's input is saved whole, its message need not
/// repeat 60 KiB of it.
fn brief(x: &impl Debug) -> String {
    let full = format!("{x:?}");
    match full.char_indices().nth(300) {
        Some((i, _)) => format!("{}… ({} chars)", &full[..i], full.chars().count()),
        None => full,
    }
}

/// The item and outcome a recipe of bytes describes (what [`round_trip`] checks), e.g. to
/// seed a corpus with valid encodings.
pub fn messages(recipe: &[u8]) -> (ItemMessage, OutcomeMessage) {
    let mut r = Recipe {
        data: recipe,
        pos: 0,
    };
    (r.item(), r.outcome())
}

/// Turns fuzz bytes into field values; past the end of the input every byte reads as 0.
struct Recipe<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Recipe<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn raw<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }

    /// Mostly values at bincode's varint boundaries (250/251, 2^16, 2^32), else raw.
    fn u64(&mut self) -> u64 {
        const EDGES: [u64; 10] = [
            0,
            1,
            250,
            251,
            u16::MAX as u64,
            1 << 16,
            u32::MAX as u64,
            1 << 32,
            i64::MAX as u64,
            u64::MAX,
        ];
        match self.byte() {
            b @ 0..=127 => u64::from(b),
            b @ 128..=191 => EDGES[usize::from(b) % EDGES.len()],
            _ => u64::from_le_bytes(self.raw()),
        }
    }

    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    fn i64(&mut self) -> i64 {
        self.u64() as i64
    }

    fn f64(&mut self) -> f64 {
        const EDGES: [f64; 9] = [
            0.0,
            -0.0,
            35.0,
            -10.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE / 2.0,
            f64::MAX,
        ];
        match self.byte() {
            b @ 0..=127 => EDGES[usize::from(b) % EDGES.len()],
            _ => f64::from_le_bytes(self.raw()),
        }
    }

    /// Short strings of mixed-width characters, sometimes ones long enough to push a
    /// message past [`MAX_MESSAGE_BYTES`].
    fn string(&mut self) -> String {
        const CHARS: [char; 8] = ['a', '/', '"', '\0', '\n', 'é', '€', '\u{1F600}'];
        let len = match self.byte() {
            b @ 0..=239 => usize::from(b % 48),
            240..=253 => usize::from(u16::from_le_bytes(self.raw())),
            _ => MAX_MESSAGE_BYTES + 1,
        };
        let fill = CHARS[usize::from(self.byte()) % CHARS.len()];
        let mut s: String = (0..len.min(64))
            .map(|_| CHARS[usize::from(self.byte()) % CHARS.len()])
            .collect();
        s.extend(std::iter::repeat_n(fill, len.saturating_sub(64)));
        s
    }

    fn item(&mut self) -> ItemMessage {
        ItemMessage {
            run_id: self.string(),
            execution: self.u32(),
            attempt: self.u32(),
            input_type: [
                InputType::Parquet,
                InputType::Csv,
                InputType::Jsonl,
                InputType::Json,
            ][usize::from(self.byte()) % 4],
            bucket: self.string(),
            key: self.string(),
            row_groups: self.flag().then(|| (self.u32(), self.u32())),
            first_index: self.u64(),
            result: ResultTarget {
                bucket: self.string(),
                prefix: self.string(),
            },
            analysis_time_ms: self.i64(),
            thresholds: Thresholds {
                temperature_high: self.f64(),
                temperature_low: self.f64(),
                humidity_high: self.f64(),
                humidity_low: self.f64(),
                battery_low: self.f64(),
            },
        }
    }

    fn outcome(&mut self) -> OutcomeMessage {
        OutcomeMessage {
            run_id: self.string(),
            execution: self.u32(),
            attempt: self.u32(),
            worker_id: self.string(),
            started_ms: self.i64(),
            finished_ms: self.i64(),
            bytes_read: self.u64(),
            status: if !self.flag() {
                let devices = match self.byte() {
                    b @ 0..=249 => usize::from(b % 8),
                    _ => 300,
                };
                ItemStatus::Succeeded {
                    readings: self.u64(),
                    anomalies: AnomalyCounts {
                        temperature_spike: self.u64(),
                        humidity_anomaly: self.u64(),
                        low_battery: self.u64(),
                        readings_with_anomalies: self.u64(),
                    },
                    devices: (0..devices)
                        .map(|_| DeviceAnomalies {
                            deviceid: self.string(),
                            readings_with_anomalies: self.u64(),
                        })
                        .collect(),
                    devices_truncated: self.flag(),
                    result_key: self.string(),
                }
            } else {
                ItemStatus::Failed {
                    error: self.string(),
                    cause: self.string(),
                }
            },
        }
    }
}
