//! Which file holds which readings, laid out as Athena UNLOAD leaves them.
//!
//! With at least as many files as devices, UNLOAD `PARTITIONED BY (deviceid_partition)` gives
//! one folder per device (`deviceid_partition=sensor-001/`) holding that device's readings
//! split in time order. With fewer files, there are no partitions: each file directly under the
//! prefix holds a contiguous group of whole devices. Either way the files, in order, are
//! consecutive slices of [`crate::readings::all_readings`], which is what lets the generator
//! stream readings without knowing the layout.

use crate::readings::{Reading, all_readings, device_id};
use crate::{GenConfig, SampleError};

/// One data file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Object key (or path relative to the output folder).
    pub key: String,
    /// Number of readings (rows) in the file.
    pub rows: u64,
}

/// Plans every data file of `cfg`, in manifest order.
pub fn plan_files(cfg: &GenConfig) -> Result<Vec<PlannedFile>, SampleError> {
    cfg.validate()?;
    let prefix = cfg.normalized_prefix();
    let per_device = cfg.readings_per_device();
    let files = cfg.files.unwrap_or(cfg.devices);
    let mut plan = Vec::new();
    let mut push = |dir: &str, rows: u64| {
        let index = plan.len();
        // Athena names files `<query start>_<sequence>_<random>_<uuid>` without extension.
        let name = format!(
            "{}_00001_fleet_{:x}_{index:05}",
            cfg.start.format("%Y%m%d_%H%M%S"),
            cfg.seed
        );
        plan.push(PlannedFile {
            key: format!("{prefix}{dir}{name}"),
            rows,
        });
    };

    if files >= cfg.devices {
        for device in 0..cfg.devices {
            let dir = format!("deviceid_partition={}/", device_id(device, cfg.devices));
            let share = u64::from(even_share(files, cfg.devices, device));
            for chunk in 0..share {
                push(&dir, even_share(per_device, share, chunk));
            }
        }
    } else {
        for file in 0..files {
            let devices_here = u64::from(even_share(cfg.devices, files, file));
            push("", devices_here * per_device);
        }
    }
    Ok(plan)
}

/// Part `i` of `total` split into `parts` as evenly as possible, larger parts first.
fn even_share<T>(total: T, parts: T, i: T) -> T
where
    T: Copy + std::ops::Div<Output = T> + std::ops::Rem<Output = T> + PartialOrd + From<u8>,
    T: std::ops::Add<Output = T>,
{
    let base = total / parts;
    if i < total % parts {
        base + T::from(1)
    } else {
        base
    }
}

/// Every reading paired with the index of the file it belongs to, in file order then row
/// order. The pure core of the generator, for tests and tools that want the data without
/// Parquet.
pub fn generate_readings(
    cfg: &GenConfig,
) -> Result<impl Iterator<Item = (usize, Reading)> + Send + 'static, SampleError> {
    let plan = plan_files(cfg)?;
    let file_of_row = plan
        .into_iter()
        .enumerate()
        .flat_map(|(index, file)| std::iter::repeat_n(index, file.rows as usize));
    Ok(file_of_row.zip(all_readings(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_per_device_by_default() {
        let plan = plan_files(&GenConfig::default()).unwrap();
        let keys: Vec<&str> = plan.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "iot-unload/deviceid_partition=sensor-001/20240115_000000_00001_fleet_2a_00000",
                "iot-unload/deviceid_partition=sensor-002/20240115_000000_00001_fleet_2a_00001",
                "iot-unload/deviceid_partition=sensor-003/20240115_000000_00001_fleet_2a_00002",
                "iot-unload/deviceid_partition=sensor-004/20240115_000000_00001_fleet_2a_00003",
                "iot-unload/deviceid_partition=sensor-005/20240115_000000_00001_fleet_2a_00004",
            ]
        );
        assert!(plan.iter().all(|f| f.rows == 24));
    }

    #[test]
    fn extra_files_split_devices_in_time_order_as_evenly_as_possible() {
        let cfg = GenConfig {
            devices: 2,
            files: Some(5),
            readings_per_day: 10,
            ..Default::default()
        };
        let plan = plan_files(&cfg).unwrap();
        let rows: Vec<u64> = plan.iter().map(|f| f.rows).collect();
        // sensor-001 gets 3 files (4+3+3 rows), sensor-002 gets 2 (5+5).
        assert_eq!(rows, [4, 3, 3, 5, 5]);
        assert!(plan[2].key.contains("deviceid_partition=sensor-001/"));
        assert!(plan[3].key.contains("deviceid_partition=sensor-002/"));
    }

    #[test]
    fn fewer_files_than_devices_group_whole_devices_unpartitioned() {
        let cfg = GenConfig {
            devices: 50,
            days: 30,
            files: Some(20),
            prefix: "out".into(),
            ..Default::default()
        };
        let plan = plan_files(&cfg).unwrap();
        assert_eq!(plan.len(), 20);
        assert_eq!(plan.iter().map(|f| f.rows).sum::<u64>(), 36_000);
        // 50 devices over 20 files: 10 files of 3 devices, 10 of 2; 720 readings each.
        assert_eq!(plan[0].rows, 3 * 720);
        assert_eq!(plan[19].rows, 2 * 720);
        assert!(plan.iter().all(|f| f.key.starts_with("out/2024")));
        assert!(!plan.iter().any(|f| f.key.contains("partition")));
    }

    #[test]
    fn readings_are_tagged_with_their_file() {
        let cfg = GenConfig {
            devices: 3,
            files: Some(2),
            ..Default::default()
        };
        let tagged: Vec<(usize, Reading)> = generate_readings(&cfg).unwrap().collect();
        assert_eq!(tagged.len(), 72);
        // File 0 holds sensor-001 and sensor-002, file 1 holds sensor-003.
        assert!(tagged[..48].iter().all(|(f, _)| *f == 0));
        assert_eq!(tagged[47].1.deviceid, "sensor-002");
        assert!(
            tagged[48..]
                .iter()
                .all(|(f, r)| *f == 1 && r.deviceid == "sensor-003")
        );
    }
}
