//! A map run request and its validation: everything is checked before anything is created.

use fleetmap_objstore::S3Uri;
use fleetmap_protocol::{InputType, ResultTarget, Thresholds};

use crate::batcher::ItemBatcher;
use crate::error::CoordinatorError;
use crate::reader::ItemSource;
use crate::retry::Retrier;
use crate::run::Tolerance;

/// A request to start a map run (Step Functions' Map state definition, flattened). Kept in
/// checkpoints, where what is unset is left out.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunSpec {
    pub source: ItemSource,
    pub input_type: InputType,
    pub max_concurrency: u32,
    pub tolerance: Tolerance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batcher: Option<ItemBatcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry: Vec<Retrier>,
    /// Where workers write the analytics records.
    pub results: ResultTarget,
    /// ResultWriter prefix; `None` puts it at `s3://{results bucket}/mapruns/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_writer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub thresholds: Thresholds,
}

impl RunSpec {
    /// A run over `source` with the reference job's defaults: Parquet, no tolerance, no
    /// batching, no retries, default thresholds.
    pub fn new(source: ItemSource, results: ResultTarget) -> Self {
        RunSpec {
            source,
            input_type: InputType::Parquet,
            max_concurrency: 0,
            tolerance: Tolerance::default(),
            batcher: None,
            retry: Vec::new(),
            results,
            result_writer: None,
            label: None,
            thresholds: Thresholds::default(),
        }
    }
}

/// Step Functions caps `Label` at 40 characters.
pub const MAX_LABEL_CHARS: usize = 40;

/// Checks a run request; returns the ResultWriter prefix.
pub fn validate(spec: &RunSpec) -> Result<S3Uri, CoordinatorError> {
    let bad = |m: String| Err(CoordinatorError::InvalidRequest(m));
    if let Err(e) = spec.thresholds.validate() {
        return bad(e);
    }
    if let Err(e) = fleetmap_objstore::uri::validate_bucket(&spec.results.bucket) {
        return bad(format!("results bucket {:?}: {e}", spec.results.bucket));
    }
    if let Err(e) = validate_prefix(&spec.results.prefix) {
        return bad(format!("results prefix {:?}: {e}", spec.results.prefix));
    }
    if let Some(p) = spec.tolerance.percentage
        && !(p.is_finite() && (0.0..=100.0).contains(&p))
    {
        return bad(format!(
            "ToleratedFailurePercentage must be between 0 and 100, got {p}"
        ));
    }
    if let Some(b) = &spec.batcher {
        b.validate().map_err(CoordinatorError::InvalidRequest)?;
        if spec.input_type != InputType::Parquet {
            return bad("ItemBatcher row-group batching needs InputType PARQUET".into());
        }
    }
    for r in &spec.retry {
        r.validate().map_err(CoordinatorError::InvalidRequest)?;
    }
    if let Some(label) = &spec.label
        && (label.chars().count() > MAX_LABEL_CHARS || label.chars().any(|c| c.is_control()))
    {
        return bad(format!(
            "Label must be at most {MAX_LABEL_CHARS} printable characters, got {label:?}"
        ));
    }
    // Refuse a source that can never be read now, with the field named, rather than
    // accept the run and fail it later with States.ItemReaderFailed.
    match &spec.source {
        ItemSource::AthenaManifest { uri } | ItemSource::Prefix { uri } if uri.is_empty() => {
            return bad("the item source URI is empty".into());
        }
        ItemSource::AthenaManifest { uri } => {
            S3Uri::parse(uri).map_err(|e| {
                CoordinatorError::InvalidRequest(format!("ItemReader Manifest: {e}"))
            })?;
        }
        ItemSource::Prefix { uri } => {
            S3Uri::parse_prefix(uri)
                .map_err(|e| CoordinatorError::InvalidRequest(format!("ItemReader Prefix: {e}")))?;
        }
        ItemSource::Objects { uris } => {
            if uris.is_empty() {
                return bad("ItemReader Items is an empty list".into());
            }
            for (i, uri) in uris.iter().enumerate() {
                S3Uri::parse(uri).map_err(|e| {
                    CoordinatorError::InvalidRequest(format!("ItemReader Items[{i}]: {e}"))
                })?;
            }
        }
    }
    let writer = match &spec.result_writer {
        Some(uri) => S3Uri::parse_prefix(uri)
            .map_err(|e| CoordinatorError::InvalidRequest(format!("ResultWriter prefix: {e}")))?,
        None => S3Uri {
            bucket: spec.results.bucket.clone(),
            key: "mapruns/".into(),
        },
    };
    if let Err(e) = validate_prefix(&writer.key) {
        return bad(format!("ResultWriter prefix {:?}: {e}", writer.key));
    }
    Ok(writer)
}

/// A key prefix must not climb out of its bucket or prefix (`..`) or start at `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.starts_with('/') {
        return Err("must not start with '/'".into());
    }
    if prefix.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err("must not contain '.' or '..' segments".into());
    }
    if prefix.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    if prefix.len() > 512 {
        return Err(format!("is {} bytes, more than 512", prefix.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec::new(
            ItemSource::AthenaManifest {
                uri: "s3://data/m.csv".into(),
            },
            ResultTarget {
                bucket: "results".into(),
                prefix: "analytics".into(),
            },
        )
    }

    #[test]
    fn prefixes_cannot_escape() {
        assert!(validate_prefix("analytics").is_ok());
        assert!(validate_prefix("a/b/c/").is_ok());
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("../other").is_err());
        assert!(validate_prefix("a/../../b").is_err());
        assert!(validate_prefix("/abs").is_err());
        assert!(validate_prefix("a\nb").is_err());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let mut s = spec();
        s.results.prefix = "../escape".into();
        assert!(
            validate(&s)
                .unwrap_err()
                .to_string()
                .contains("results prefix")
        );
        let mut s = spec();
        s.tolerance.percentage = Some(150.0);
        assert!(
            validate(&s)
                .unwrap_err()
                .to_string()
                .contains("ToleratedFailurePercentage")
        );
        let mut s = spec();
        s.label = Some("x".repeat(41));
        assert!(validate(&s).unwrap_err().to_string().contains("Label"));
        let mut s = spec();
        s.result_writer = Some("s3://results/../x/".into());
        assert!(
            validate(&s)
                .unwrap_err()
                .to_string()
                .contains("ResultWriter")
        );
        let mut s = spec();
        s.results.bucket = "Bad_Bucket".into();
        assert!(
            validate(&s)
                .unwrap_err()
                .to_string()
                .contains("results bucket")
        );
        assert_eq!(
            validate(&spec()).unwrap().to_string(),
            "s3://results/mapruns/"
        );
    }
}
