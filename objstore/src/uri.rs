//! `s3://bucket/key` URIs as they appear in Athena UNLOAD manifests, run inputs and CLI flags.
//!
//! Parsing is strict and does not trim: a manifest line's surrounding whitespace is the
//! manifest reader's business, and a key may legitimately end in a space.

use std::fmt;

use crate::ObjStoreError;

/// S3's limit on key length, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// An object (or, from [`S3Uri::parse_prefix`], a prefix) in a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

impl S3Uri {
    /// Parses `s3://bucket/key`; the key must not be empty.
    pub fn parse(s: &str) -> Result<S3Uri, ObjStoreError> {
        let uri = Self::parse_prefix(s)?;
        if uri.key.is_empty() {
            return Err(invalid(s, "the object key is empty"));
        }
        Ok(uri)
    }

    /// Parses `s3://bucket`, `s3://bucket/` or `s3://bucket/prefix`; the key may be empty.
    pub fn parse_prefix(s: &str) -> Result<S3Uri, ObjStoreError> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| invalid(s, "the scheme must be s3://"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        validate_bucket(bucket).map_err(|reason| invalid(s, &reason))?;
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid(s, "the key is longer than 1024 bytes"));
        }
        Ok(S3Uri {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

fn invalid(uri: &str, reason: &str) -> ObjStoreError {
    ObjStoreError::InvalidUri {
        uri: uri.to_owned(),
        reason: reason.to_owned(),
    }
}

/// S3's bucket naming rules (general purpose buckets): 3–63 characters of lowercase letters,
/// digits, dots and hyphens, starting and ending with a letter or digit, no `..`.
pub fn validate_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket name is empty".to_owned());
    }
    if !(3..=63).contains(&bucket.len()) {
        return Err(format!(
            "bucket name {bucket:?} must be 3 to 63 characters long"
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    if let Some(bad) = bucket.chars().find(|&c| !allowed(c)) {
        return Err(format!(
            "bucket name {bucket:?} contains {bad:?}; only lowercase letters, digits, '.' and '-' are allowed"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(bucket.chars().next()) || !edge_ok(bucket.chars().last()) {
        return Err(format!(
            "bucket name {bucket:?} must start and end with a letter or digit"
        ));
    }
    if bucket.contains("..") {
        return Err(format!("bucket name {bucket:?} contains '..'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_and_rejects_per_s3_rules() {
        // (input, expected bucket/key or None when rejected)
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("s3://b/k", None),          // bucket too short
            ("http://x/y", None),        // wrong scheme
            ("S3://bucket/k", None),     // scheme is case-sensitive
            ("s3://bucket", None),       // no key
            ("s3://bucket/", None),      // empty key
            ("s3://Bucket/k", None),     // uppercase
            ("s3://my_bucket/k", None),  // underscore
            ("s3://-bucket/k", None),    // leading hyphen
            ("s3://bucket-/k", None),    // trailing hyphen
            ("s3://my..bucket/k", None), // double dot
            (" s3://bucket/k", None),    // not trimmed
            ("s3:///k", None),           // empty bucket
            (
                "s3://my-bucket/a/b c.parquet",
                Some(("my-bucket", "a/b c.parquet")),
            ),
            ("s3://abc/k", Some(("abc", "k"))),
            ("s3://my.bucket.1/x/", Some(("my.bucket.1", "x/"))),
            ("s3://bucket/k ", Some(("bucket", "k "))), // a key may end in a space
            ("s3://bucket//double", Some(("bucket", "/double"))),
        ];
        for (input, expected) in cases {
            let got = S3Uri::parse(input);
            match (expected, got) {
                (Some((b, k)), Ok(uri)) => {
                    assert_eq!((uri.bucket.as_str(), uri.key.as_str()), (*b, *k), "{input}")
                }
                (None, Err(ObjStoreError::InvalidUri { uri, .. })) => assert_eq!(uri, *input),
                (expected, got) => panic!("{input:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn parse_prefix_allows_an_empty_key() {
        for (input, key) in [
            ("s3://bucket", ""),
            ("s3://bucket/", ""),
            ("s3://bucket/iot-unload/", "iot-unload/"),
        ] {
            let uri = S3Uri::parse_prefix(input).expect(input);
            assert_eq!(uri.bucket, "bucket");
            assert_eq!(uri.key, key);
        }
        assert!(S3Uri::parse_prefix("s3://ab").is_err());
    }

    #[test]
    fn overlong_bucket_and_key_are_rejected() {
        let long_bucket = format!("s3://{}/k", "a".repeat(64));
        assert!(S3Uri::parse(&long_bucket).is_err());
        let ok_bucket = format!("s3://{}/k", "a".repeat(63));
        assert!(S3Uri::parse(&ok_bucket).is_ok());
        let long_key = format!("s3://bucket/{}", "k".repeat(1025));
        assert!(S3Uri::parse(&long_key).is_err());
    }

    #[test]
    fn display_round_trips() {
        let s = "s3://my-bucket/iot-unload/deviceid_partition=sensor-001/x";
        assert_eq!(S3Uri::parse(s).unwrap().to_string(), s);
    }

    #[test]
    fn rejection_reason_names_the_problem() {
        let err = S3Uri::parse("s3://Bucket/k").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("s3://Bucket/k"), "{msg}");
        assert!(msg.contains("'B'"), "{msg}");
    }
}
