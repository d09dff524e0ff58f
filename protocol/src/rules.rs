//! The anomaly rules of the reference job, as configuration.
//!
//! The AWS sample's Lambda flags a temperature spike above 35 °C or below -10 °C, a humidity
//! anomaly above 95 % or below 5 %, and low battery below 20 %. Values exactly at a threshold
//! are normal, and a missing or NaN value is never an anomaly. The thresholds travel inside
//! every item so a run's rules are fixed when it starts, whatever the workers' config says.

use serde::{Deserialize, Serialize};

/// The kinds of anomaly, in the order records list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnomalyType {
    TemperatureSpike,
    HumidityAnomaly,
    LowBattery,
}

impl AnomalyType {
    pub const ALL: [AnomalyType; 3] = [
        AnomalyType::TemperatureSpike,
        AnomalyType::HumidityAnomaly,
        AnomalyType::LowBattery,
    ];

    /// The `type` string of an anomaly in an analytics record.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyType::TemperatureSpike => "temperature_spike",
            AnomalyType::HumidityAnomaly => "humidity_anomaly",
            AnomalyType::LowBattery => "low_battery",
        }
    }
}

/// Thresholds with the sample's defaults. Strict comparisons: `value > high` or `value < low`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub temperature_high: f64,
    pub temperature_low: f64,
    pub humidity_high: f64,
    pub humidity_low: f64,
    pub battery_low: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            temperature_high: 35.0,
            temperature_low: -10.0,
            humidity_high: 95.0,
            humidity_low: 5.0,
            battery_low: 20.0,
        }
    }
}

/// One rule broken by one value: the anomaly's type and its `threshold` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    TemperatureHigh,
    TemperatureLow,
    HumidityHigh,
    HumidityLow,
    BatteryLow,
}

impl Breach {
    pub fn anomaly_type(self) -> AnomalyType {
        match self {
            Breach::TemperatureHigh | Breach::TemperatureLow => AnomalyType::TemperatureSpike,
            Breach::HumidityHigh | Breach::HumidityLow => AnomalyType::HumidityAnomaly,
            Breach::BatteryLow => AnomalyType::LowBattery,
        }
    }
}

impl Thresholds {
    /// Rejects thresholds that cannot describe a normal range (NaN, inverted bounds).
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("temperature_high", self.temperature_high),
            ("temperature_low", self.temperature_low),
            ("humidity_high", self.humidity_high),
            ("humidity_low", self.humidity_low),
            ("battery_low", self.battery_low),
        ];
        if let Some((name, v)) = all.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("threshold {name} must be a finite number, got {v}"));
        }
        if self.temperature_low > self.temperature_high {
            return Err(format!(
                "temperature_low ({}) is above temperature_high ({})",
                self.temperature_low, self.temperature_high
            ));
        }
        if self.humidity_low > self.humidity_high {
            return Err(format!(
                "humidity_low ({}) is above humidity_high ({})",
                self.humidity_low, self.humidity_high
            ));
        }
        Ok(())
    }

    /// The temperature rule. `None` for normal, missing and NaN values.
    #[inline]
    pub fn temperature(&self, v: f64) -> Option<Breach> {
        if v > self.temperature_high {
            Some(Breach::TemperatureHigh)
        } else if v < self.temperature_low {
            Some(Breach::TemperatureLow)
        } else {
            None
        }
    }

    #[inline]
    pub fn humidity(&self, v: f64) -> Option<Breach> {
        if v > self.humidity_high {
            Some(Breach::HumidityHigh)
        } else if v < self.humidity_low {
            Some(Breach::HumidityLow)
        } else {
            None
        }
    }

    #[inline]
    pub fn battery(&self, v: f64) -> Option<Breach> {
        if v < self.battery_low {
            Some(Breach::BatteryLow)
        } else {
            None
        }
    }

    /// The record's `threshold` label for a breach, as the sample writes it (`>35°C`).
    pub fn label(&self, breach: Breach) -> String {
        match breach {
            Breach::TemperatureHigh => format!(">{}°C", num(self.temperature_high)),
            Breach::TemperatureLow => format!("<{}°C", num(self.temperature_low)),
            Breach::HumidityHigh => format!(">{}%", num(self.humidity_high)),
            Breach::HumidityLow => format!("<{}%", num(self.humidity_low)),
            Breach::BatteryLow => format!("<{}%", num(self.battery_low)),
        }
    }
}

/// `35.0` → `35`, `35.5` → `35.5`: the sample's labels carry no trailing `.0`.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_at_thresholds_are_normal() {
        let t = Thresholds::default();
        assert_eq!(t.temperature(35.0), None);
        assert_eq!(t.temperature(-10.0), None);
        assert_eq!(t.humidity(95.0), None);
        assert_eq!(t.humidity(5.0), None);
        assert_eq!(t.battery(20.0), None);
    }

    #[test]
    fn values_past_thresholds_breach() {
        let t = Thresholds::default();
        assert_eq!(t.temperature(35.01), Some(Breach::TemperatureHigh));
        assert_eq!(t.temperature(-10.01), Some(Breach::TemperatureLow));
        assert_eq!(t.humidity(95.5), Some(Breach::HumidityHigh));
        assert_eq!(t.humidity(4.99), Some(Breach::HumidityLow));
        assert_eq!(t.battery(19.99), Some(Breach::BatteryLow));
    }

    #[test]
    fn nan_is_never_an_anomaly() {
        let t = Thresholds::default();
        assert_eq!(t.temperature(f64::NAN), None);
        assert_eq!(t.humidity(f64::NAN), None);
        assert_eq!(t.battery(f64::NAN), None);
    }

    #[test]
    fn labels_match_the_sample() {
        let t = Thresholds::default();
        assert_eq!(t.label(Breach::TemperatureHigh), ">35°C");
        assert_eq!(t.label(Breach::TemperatureLow), "<-10°C");
        assert_eq!(t.label(Breach::HumidityHigh), ">95%");
        assert_eq!(t.label(Breach::HumidityLow), "<5%");
        assert_eq!(t.label(Breach::BatteryLow), "<20%");
        let custom = Thresholds {
            battery_low: 12.5,
            ..t
        };
        assert_eq!(custom.label(Breach::BatteryLow), "<12.5%");
    }

    #[test]
    fn inverted_or_nan_thresholds_are_rejected() {
        let t = Thresholds {
            humidity_low: 99.0,
            ..Thresholds::default()
        };
        assert!(t.validate().unwrap_err().contains("humidity_low"));
        let t = Thresholds {
            battery_low: f64::NAN,
            ..Thresholds::default()
        };
        assert!(t.validate().unwrap_err().contains("battery_low"));
        assert!(Thresholds::default().validate().is_ok());
    }
}
