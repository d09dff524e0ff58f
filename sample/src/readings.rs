//! The readings themselves: a pure, seeded model of the AWS sample's IoT sensors.
//!
//! Each device draws from its own random stream derived from the seed and its index, so a
//! device's readings do not depend on how many devices or files there are. Every reading makes
//! the same number of draws whatever branch it takes, so the streams never drift apart.

use chrono::{Duration, NaiveDateTime};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::GenConfig;

/// Share of readings with a temperature spike.
pub const TEMPERATURE_SPIKE_RATE: f64 = 0.05;
/// Share of readings with a humidity anomaly.
pub const HUMIDITY_ANOMALY_RATE: f64 = 0.03;
/// Battery percentage lost per hour since the first reading.
pub const BATTERY_DRAIN_PER_HOUR: f64 = 1.5;

/// One sensor reading: one row of the data files.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub deviceid: String,
    /// ISO `YYYY-MM-DDTHH:MM:SS`, no zone, as the sample stores it.
    pub timestamp: String,
    pub temperature: f64,
    pub humidity: f64,
    pub batterylevel: f64,
    pub latitude: f64,
    pub longitude: f64,
}

/// `sensor-001` … `sensor-NNN`: three digits, more when there are more than 999 devices, so
/// names sort in device order.
pub fn device_id(index: u32, devices: u32) -> String {
    let width = devices.to_string().len().max(3);
    format!("sensor-{:0width$}", index + 1)
}

/// Every reading of the data set: device by device, each in time order.
pub fn all_readings(cfg: &GenConfig) -> impl Iterator<Item = Reading> + Send + 'static {
    let cfg = cfg.clone();
    (0..cfg.devices).flat_map(move |d| DeviceReadings::new(&cfg, d))
}

/// One device's readings in time order.
pub struct DeviceReadings {
    deviceid: String,
    rng: SmallRng,
    start: NaiveDateTime,
    readings_per_day: u64,
    next: u64,
    total: u64,
    base_temperature: f64,
    base_humidity: f64,
    battery_start: f64,
    latitude: f64,
    longitude: f64,
}

impl DeviceReadings {
    /// The device's fixed traits are drawn first from its own stream.
    pub fn new(cfg: &GenConfig, device_index: u32) -> DeviceReadings {
        // Spread device indexes over the seed space (golden-ratio increment, as SplitMix64
        // does); SmallRng's seeding then decorrelates neighbouring seeds.
        let device_seed = cfg
            .seed
            .wrapping_add((u64::from(device_index) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut rng = SmallRng::seed_from_u64(device_seed);
        DeviceReadings {
            deviceid: device_id(device_index, cfg.devices),
            base_temperature: rng.random_range(20.0..=30.0),
            base_humidity: rng.random_range(40.0..=70.0),
            battery_start: rng.random_range(60.0..=100.0),
            latitude: 47.6 + rng.random_range(-0.5..=0.5),
            longitude: -122.3 + rng.random_range(-0.5..=0.5),
            rng,
            start: cfg.start,
            readings_per_day: u64::from(cfg.readings_per_day),
            next: 0,
            total: cfg.readings_per_device(),
        }
    }
}

impl Iterator for DeviceReadings {
    type Item = Reading;

    fn next(&mut self) -> Option<Reading> {
        if self.next >= self.total {
            return None;
        }
        let i = self.next;
        self.next += 1;
        // Integer seconds keep the spacing exact when readings_per_day divides a day.
        let offset_secs = i * 86_400 / self.readings_per_day;
        let at = self.start + Duration::seconds(i64::try_from(offset_secs).ok()?);
        let hours = offset_secs as f64 / 3600.0;

        let rng = &mut self.rng;
        // Draw everything up front, in a fixed order, whatever the branches decide.
        let temperature_noise = rng.random_range(-2.0..=2.0);
        let spike = rng.random_bool(TEMPERATURE_SPIKE_RATE);
        let spike_hot = rng.random_bool(0.5);
        // Ranges stop short of the thresholds so rounding to 2 decimals cannot land a spike
        // exactly on -10 °C or 5 %, which the rules do not count as anomalies.
        let spike_hot_value = rng.random_range(40.0..=50.0);
        let spike_cold_value = rng.random_range(-15.0..=-10.01);
        let humidity_noise = rng.random_range(-5.0..=5.0);
        let humidity_anomaly = rng.random_bool(HUMIDITY_ANOMALY_RATE);
        let humidity_high = rng.random_bool(0.5);
        let humidity_high_value = rng.random_range(98.0..=100.0);
        let humidity_low_value = rng.random_range(2.0..=4.99);
        let latitude_noise = rng.random_range(-0.001..=0.001);
        let longitude_noise = rng.random_range(-0.001..=0.001);

        let temperature = match (spike, spike_hot) {
            (false, _) => self.base_temperature + temperature_noise,
            (true, true) => spike_hot_value,
            (true, false) => spike_cold_value,
        };
        let humidity = match (humidity_anomaly, humidity_high) {
            (false, _) => self.base_humidity + humidity_noise,
            (true, true) => humidity_high_value,
            (true, false) => humidity_low_value,
        };
        let battery = (self.battery_start - BATTERY_DRAIN_PER_HOUR * hours).max(0.0);

        Some(Reading {
            deviceid: self.deviceid.clone(),
            timestamp: at.format("%Y-%m-%dT%H:%M:%S").to_string(),
            temperature: round(temperature, 2),
            humidity: round(humidity, 2),
            batterylevel: round(battery, 2),
            latitude: round(self.latitude + latitude_noise, 6),
            longitude: round(self.longitude + longitude_noise, 6),
        })
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_zero_padded_to_sort_in_order() {
        assert_eq!(device_id(0, 5), "sensor-001");
        assert_eq!(device_id(998, 999), "sensor-999");
        assert_eq!(device_id(0, 1000), "sensor-0001");
        assert_eq!(device_id(999, 1000), "sensor-1000");
    }

    #[test]
    fn readings_are_spaced_evenly_from_start() {
        let cfg = GenConfig {
            devices: 1,
            readings_per_day: 4,
            days: 2,
            ..Default::default()
        };
        let stamps: Vec<String> = all_readings(&cfg).map(|r| r.timestamp).collect();
        assert_eq!(
            stamps,
            [
                "2024-01-15T00:00:00",
                "2024-01-15T06:00:00",
                "2024-01-15T12:00:00",
                "2024-01-15T18:00:00",
                "2024-01-16T00:00:00",
                "2024-01-16T06:00:00",
                "2024-01-16T12:00:00",
                "2024-01-16T18:00:00",
            ]
        );
    }

    #[test]
    fn battery_drains_one_and_a_half_per_hour_and_stops_at_zero() {
        let cfg = GenConfig {
            devices: 3,
            days: 4,
            ..Default::default()
        };
        let readings: Vec<Reading> = all_readings(&cfg).collect();
        for device in readings.chunks(96) {
            let first = device[0].batterylevel;
            assert!((60.0..=100.0).contains(&first), "{first}");
            let expected_after_10h = (first - 15.0).max(0.0);
            assert!((device[10].batterylevel - expected_after_10h).abs() < 0.011);
            // 60 % drains in 40 hours, so the last day is flat at zero.
            assert_eq!(device[95].batterylevel, 0.0);
        }
        assert!(readings.iter().all(|r| r.batterylevel >= 0.0));
    }

    #[test]
    fn anomaly_rates_are_close_to_the_sample() {
        let cfg = GenConfig {
            devices: 100,
            days: 10,
            seed: 7,
            ..Default::default()
        };
        let readings: Vec<Reading> = all_readings(&cfg).collect();
        let n = readings.len() as f64;
        assert_eq!(readings.len(), 24_000);
        let spikes = readings
            .iter()
            .filter(|r| r.temperature > 35.0 || r.temperature < -10.0)
            .count() as f64;
        let humidity = readings
            .iter()
            .filter(|r| r.humidity > 95.0 || r.humidity < 5.0)
            .count() as f64;
        assert!(
            (0.04..0.06).contains(&(spikes / n)),
            "spikes {}",
            spikes / n
        );
        assert!(
            (0.02..0.04).contains(&(humidity / n)),
            "humidity {}",
            humidity / n
        );
        // Outside anomalies, values stay in the sample's normal bands.
        for r in &readings {
            assert!(
                (18.0..=32.0).contains(&r.temperature)
                    || (40.0..=50.0).contains(&r.temperature)
                    || (-15.0..=-10.01).contains(&r.temperature),
                "{r:?}"
            );
            assert!((47.099..=48.101).contains(&r.latitude), "{r:?}");
            assert!((-122.801..=-121.799).contains(&r.longitude), "{r:?}");
        }
    }

    #[test]
    fn a_device_reads_the_same_whatever_the_device_count() {
        let small = GenConfig {
            devices: 2,
            ..Default::default()
        };
        let large = GenConfig {
            devices: 50,
            ..Default::default()
        };
        let a: Vec<Reading> = all_readings(&small).take(48).collect();
        let b: Vec<Reading> = all_readings(&large).take(48).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn values_are_rounded_like_the_sample() {
        for r in all_readings(&GenConfig::default()) {
            for v in [r.temperature, r.humidity, r.batterylevel] {
                assert_eq!(round(v, 2), v, "{r:?}");
            }
            assert_eq!(round(r.latitude, 6), r.latitude);
        }
    }
}
