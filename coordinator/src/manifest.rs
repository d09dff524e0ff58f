//! Parsing Athena UNLOAD manifests (`ManifestType: ATHENA_DATA`).
//!
//! A manifest is one `s3://bucket/key` per line, no header. Real ones arrive with a UTF-8
//! BOM, CRLF endings, trailing blank lines or quotes when someone round-trips them through a
//! spreadsheet; those are tolerated. Anything else is an error that names the line, because a
//! manifest is the run's whole input and silently skipping a line would lose data.
//!
//! The parser is incremental ([`ManifestParser::push_line`]) so a caller can stream a
//! manifest of millions of lines without holding the raw text; it keeps only the parsed
//! URIs and a set of hashes for duplicate detection.

use std::collections::HashMap;

use fleetmap_objstore::S3Uri;

/// Upper bound on one manifest line; an S3 URI is at most ~1,100 bytes (63-byte bucket,
/// 1,024-byte key), so a longer line is not a URI and may be a binary file read by mistake.
pub const MAX_LINE_BYTES: usize = 4096;

/// What is wrong with a manifest, with the 1-based line number where it applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {manifest} line {line}: {reason}")]
    BadLine {
        manifest: String,
        line: u64,
        reason: String,
    },
    #[error("manifest {manifest} line {line} repeats the object of line {first_line}: {uri}")]
    Duplicate {
        manifest: String,
        line: u64,
        first_line: u64,
        uri: String,
    },
    #[error("manifest {manifest} lists no objects")]
    Empty { manifest: String },
}

/// Streaming manifest parser: feed lines, then [`ManifestParser::finish`].
#[derive(Debug)]
pub struct ManifestParser {
    manifest: String,
    line: u64,
    uris: Vec<S3Uri>,
    first_seen: HashMap<u64, Vec<(u64, u32)>>,
}

impl ManifestParser {
    /// `manifest` names the manifest in error messages (its URI).
    pub fn new(manifest: impl Into<String>) -> Self {
        ManifestParser {
            manifest: manifest.into(),
            line: 0,
            uris: Vec::new(),
            first_seen: HashMap::new(),
        }
    }

    /// Parses one line (with or without its `\n` / `\r\n`).
    pub fn push_line(&mut self, raw: &[u8]) -> Result<(), ManifestError> {
        self.line += 1;
        let bad = |reason: String| ManifestError::BadLine {
            manifest: self.manifest.clone(),
            line: self.line,
            reason,
        };
        if raw.len() > MAX_LINE_BYTES {
            return Err(bad(format!(
                "line is {} bytes, longer than any S3 URI ({MAX_LINE_BYTES} max)",
                raw.len()
            )));
        }
        let mut bytes = raw;
        if self.line == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text ({e})")))?;
        let mut text = text.trim_end_matches(['\n', '\r']).trim();
        if text.is_empty() {
            return Ok(());
        }
        if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
            text = &text[1..text.len() - 1];
        }
        let uri =
            S3Uri::parse(text).map_err(|e| bad(format!("{text:?} is not an object URI: {e}")))?;
        if uri.key.is_empty() || uri.key.ends_with('/') {
            return Err(bad(format!("{text:?} names a folder, not an object")));
        }
        let index = u32::try_from(self.uris.len())
            .map_err(|_| bad("more than 4,294,967,295 objects in one manifest".into()))?;
        let hash = fingerprint(&uri);
        if let Some(seen) = self.first_seen.get(&hash) {
            for &(first_line, i) in seen {
                if self.uris.get(i as usize) == Some(&uri) {
                    return Err(ManifestError::Duplicate {
                        manifest: self.manifest.clone(),
                        line: self.line,
                        first_line,
                        uri: uri.to_string(),
                    });
                }
            }
        }
        self.first_seen
            .entry(hash)
            .or_default()
            .push((self.line, index));
        self.uris.push(uri);
        Ok(())
    }

    /// The objects in manifest order; an empty manifest is an error (a run with no items
    /// would "succeed" having done nothing, which hides a broken UNLOAD).
    pub fn finish(self) -> Result<Vec<S3Uri>, ManifestError> {
        if self.uris.is_empty() {
            return Err(ManifestError::Empty {
                manifest: self.manifest,
            });
        }
        Ok(self.uris)
    }
}

/// Parses a whole manifest held in memory.
pub fn parse_manifest(manifest: &str, bytes: &[u8]) -> Result<Vec<S3Uri>, ManifestError> {
    let mut parser = ManifestParser::new(manifest);
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        parser.push_line(line)?;
    }
    parser.finish()
}

fn fingerprint(uri: &S3Uri) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    uri.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "s3://data/manifest.csv";

    fn keys(v: &[S3Uri]) -> Vec<String> {
        v.iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn plain_manifest_lists_objects_in_order() {
        let got = parse_manifest(M, b"s3://data/a/part-1\ns3://data/a/part-2\n").unwrap();
        assert_eq!(keys(&got), ["s3://data/a/part-1", "s3://data/a/part-2"]);
    }

    #[test]
    fn bom_crlf_blank_lines_and_quotes_are_tolerated() {
        let got = parse_manifest(
            M,
            b"\xEF\xBB\xBFs3://data/x/1\r\n\r\n  \"s3://data/x/2\"  \r\n\n\n",
        )
        .unwrap();
        assert_eq!(keys(&got), ["s3://data/x/1", "s3://data/x/2"]);
    }

    #[test]
    fn last_line_without_newline_counts() {
        let got = parse_manifest(M, b"s3://data/x/1\ns3://data/x/2").unwrap();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn malformed_line_is_reported_with_its_number() {
        let err = parse_manifest(M, b"s3://data/x/1\nhttps://example.com/x\n").unwrap_err();
        match &err {
            ManifestError::BadLine { line, reason, .. } => {
                assert_eq!(*line, 2);
                assert!(reason.contains("https://example.com/x"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(M));
    }

    #[test]
    fn duplicate_lines_name_both_lines() {
        let err = parse_manifest(M, b"s3://data/x/1\ns3://data/x/2\ns3://data/x/1\n").unwrap_err();
        assert_eq!(
            err,
            ManifestError::Duplicate {
                manifest: M.into(),
                line: 3,
                first_line: 1,
                uri: "s3://data/x/1".into()
            }
        );
    }

    #[test]
    fn empty_and_blank_manifests_are_errors() {
        assert!(matches!(
            parse_manifest(M, b""),
            Err(ManifestError::Empty { .. })
        ));
        assert!(matches!(
            parse_manifest(M, b"\r\n\n  \n"),
            Err(ManifestError::Empty { .. })
        ));
    }

    #[test]
    fn folder_uris_and_binary_lines_are_rejected() {
        let err = parse_manifest(M, b"s3://data/folder/\n").unwrap_err();
        assert!(err.to_string().contains("folder"), "{err}");
        let err = parse_manifest(M, b"s3://data/\xff\xfe\n").unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
        let long = vec![b'a'; MAX_LINE_BYTES + 1];
        assert!(matches!(
            parse_manifest(M, &long),
            Err(ManifestError::BadLine { line: 1, .. })
        ));
    }

    #[test]
    fn bom_is_only_stripped_on_the_first_line() {
        let err = parse_manifest(M, b"s3://data/x/1\n\xEF\xBB\xBFs3://data/x/2\n").unwrap_err();
        assert!(
            matches!(err, ManifestError::BadLine { line: 2, .. }),
            "{err}"
        );
    }
}
