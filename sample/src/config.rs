//! What to generate: [`GenConfig`] with the AWS sample's defaults.

use chrono::{NaiveDate, NaiveDateTime};

use crate::SampleError;

/// Parquet compression of the data files. Athena UNLOAD often writes uncompressed files,
/// hence the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Snappy,
    Zstd,
}

impl Compression {
    pub(crate) fn to_parquet(self) -> parquet::basic::Compression {
        match self {
            Compression::None => parquet::basic::Compression::UNCOMPRESSED,
            Compression::Snappy => parquet::basic::Compression::SNAPPY,
            Compression::Zstd => parquet::basic::Compression::ZSTD(Default::default()),
        }
    }
}

/// Shape of the generated data set. `Default` reproduces the AWS sample: 5 devices, one day of
/// hourly readings, one file per device.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Number of devices, named `sensor-001`, `sensor-002`, ...
    pub devices: u32,
    /// Days of readings per device.
    pub days: u32,
    /// Time of each device's first reading.
    pub start: NaiveDateTime,
    /// Readings per device per day, evenly spaced (24 = hourly).
    pub readings_per_day: u32,
    /// Number of data files; `None` = one per device. At least `devices` files gives
    /// `deviceid_partition=` folders; fewer puts groups of whole devices in unpartitioned files.
    pub files: Option<u32>,
    /// Maximum rows per Parquet row group.
    pub rows_per_row_group: usize,
    /// Parquet compression codec.
    pub compression: Compression,
    /// Seed of every random draw; the same seed gives byte-identical files.
    pub seed: u64,
    /// Key prefix of the data files (a trailing `/` is added when missing).
    pub prefix: String,
    /// Key of the manifest listing the data files.
    pub manifest_key: String,
    /// Return every generated reading in [`crate::GenReport::readings`] (for tests).
    pub keep_readings: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            devices: 5,
            days: 1,
            start: NaiveDate::from_ymd_opt(2024, 1, 15)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .unwrap_or_default(),
            readings_per_day: 24,
            files: None,
            rows_per_row_group: 128 * 1024,
            compression: Compression::None,
            seed: 42,
            prefix: "iot-unload/".to_owned(),
            manifest_key: "iot-unload/manifest.csv".to_owned(),
            keep_readings: false,
        }
    }
}

impl GenConfig {
    /// Readings each device produces over the whole period.
    pub fn readings_per_device(&self) -> u64 {
        u64::from(self.days) * u64::from(self.readings_per_day)
    }

    /// The prefix with exactly one trailing `/` (or empty).
    pub(crate) fn normalized_prefix(&self) -> String {
        if self.prefix.is_empty() || self.prefix.ends_with('/') {
            self.prefix.clone()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// Rejects configs that would produce no data, empty files, or paths escaping the target
    /// folder; checked up front so nothing is half-written.
    pub fn validate(&self) -> Result<(), SampleError> {
        let bad = |field, reason: &str| {
            Err(SampleError::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.devices == 0 {
            return bad("devices", "must be at least 1");
        }
        if self.days == 0 {
            return bad("days", "must be at least 1");
        }
        if !(1..=86_400).contains(&self.readings_per_day) {
            return bad("readings_per_day", "must be 1 to 86400 (one per second)");
        }
        if self.rows_per_row_group == 0 {
            return bad("rows_per_row_group", "must be at least 1");
        }
        if let Some(files) = self.files {
            if files == 0 {
                return bad("files", "must be at least 1");
            }
            // A device's readings are spread over at most ceil(files / devices) files; each
            // must get at least one row, as Athena never writes empty files.
            let per_device = u64::from(files.div_ceil(self.devices));
            if per_device > self.readings_per_device() {
                return bad(
                    "files",
                    &format!(
                        "({files}) would leave files empty: each device has only {} readings",
                        self.readings_per_device()
                    ),
                );
            }
        }
        for (field, key) in [
            ("prefix", &self.prefix),
            ("manifest_key", &self.manifest_key),
        ] {
            if key.starts_with('/') || key.split('/').any(|seg| seg == "..") {
                return bad(field, "must be a relative key without '..' segments");
            }
        }
        if self.manifest_key.is_empty() || self.manifest_key.ends_with('/') {
            return bad("manifest_key", "must name an object");
        }
        // Checked, because chrono's `+` panics past its range.
        let last = chrono::Duration::try_days(i64::from(self.days))
            .and_then(|span| self.start.checked_add_signed(span));
        if last.is_none_or(|last| last.and_utc().timestamp() > 253_402_300_799) {
            return bad("days", "run past the year 9999");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_the_aws_sample() {
        let cfg = GenConfig::default();
        assert_eq!(cfg.devices, 5);
        assert_eq!(cfg.readings_per_device(), 24);
        assert_eq!(cfg.start.to_string(), "2024-01-15 00:00:00");
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn configs_that_make_no_or_empty_files_are_rejected() {
        type Change = fn(&mut GenConfig);
        let cases: [(&str, Change); 8] = [
            ("devices", |c| c.devices = 0),
            ("days", |c| c.days = 0),
            ("readings_per_day", |c| c.readings_per_day = 0),
            ("rows_per_row_group", |c| c.rows_per_row_group = 0),
            ("files", |c| c.files = Some(0)),
            // 5 devices × 24 readings cannot fill 5 × 25 files.
            ("files", |c| c.files = Some(125)),
            ("prefix", |c| c.prefix = "../escape/".into()),
            ("days", |c| c.days = u32::MAX),
        ];
        for (field, change) in cases {
            let mut cfg = GenConfig::default();
            change(&mut cfg);
            match cfg.validate() {
                Err(SampleError::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
        let full = GenConfig {
            files: Some(120),
            ..Default::default()
        };
        assert!(full.validate().is_ok(), "one reading per file is allowed");
    }
}
