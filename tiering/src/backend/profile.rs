//! Device profiles: make a tier on this machine's one disk behave like NVMe,
//! a SATA SSD or an HDD (figures from shared/HOST-NOTES.md, "Published device
//! figures"). With a real device of the right kind, leave the profile out.

use serde::Deserialize;
use std::time::Duration;

/// How an emulated device serves 4 KiB requests.
///
/// A request enters the emulated device when the backend issues it; it is
/// served by one of `parallelism` internal units (NCQ depth / flash channels;
/// 1 for a disk arm), takes `latency_us` plus a uniform random `0..=jitter_us`
/// there, and its 4 KiB pass a bandwidth limit (a token bucket refilled at
/// `bandwidth_mib_s`, holding `burst_pages`). Its completion is delivered no
/// earlier than that and no earlier than the real I/O finished.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// Service time of one 4 KiB request.
    pub latency_us: u64,
    /// Sustained bandwidth; `None` for unlimited.
    #[serde(default)]
    pub bandwidth_mib_s: Option<f64>,
    /// Extra random service time, uniform in `0..=jitter_us`.
    #[serde(default)]
    pub jitter_us: u64,
    /// Requests the device serves at the same time.
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
    /// Pages the bandwidth bucket holds when idle.
    #[serde(default = "default_burst")]
    pub burst_pages: u32,
}

fn default_parallelism() -> u32 {
    32
}

fn default_burst() -> u32 {
    8
}

/// A profile string that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Neither a preset name nor `key=value,...`.
    #[error("unknown device profile '{0}': use nvme, ssd, hdd or key=value pairs such as latency_us=100,bandwidth_mib_s=500")]
    Unknown(String),
    /// A key that profiles do not have.
    #[error("unknown device profile field '{0}': expected latency_us, bandwidth_mib_s, jitter_us, parallelism or burst_pages")]
    Field(String),
    /// A value that is not a number or out of range.
    #[error("device profile field '{field}' has a bad value '{value}': {why}")]
    Value {
        field: String,
        value: String,
        why: &'static str,
    },
}

impl DeviceProfile {
    /// A datacentre NVMe SSD: ~80 us per random 4 KiB read, deep queues.
    pub fn nvme() -> Self {
        Self {
            latency_us: 80,
            bandwidth_mib_s: Some(2000.0),
            jitter_us: 10,
            parallelism: 32,
            burst_pages: 32,
        }
    }

    /// A SATA SSD: ~140 us, ~500 MiB/s, NCQ depth 32.
    pub fn ssd() -> Self {
        Self {
            latency_us: 140,
            bandwidth_mib_s: Some(500.0),
            jitter_us: 20,
            parallelism: 32,
            burst_pages: 8,
        }
    }

    /// A 7,200 rpm HDD: 5-8 ms per random 4 KiB read (seek + rotation), one arm.
    pub fn hdd() -> Self {
        Self {
            latency_us: 5000,
            bandwidth_mib_s: Some(150.0),
            jitter_us: 3000,
            parallelism: 1,
            burst_pages: 1,
        }
    }

    /// A named preset: `nvme`, `ssd` (or `sata`), `hdd`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "nvme" => Some(Self::nvme()),
            "ssd" | "sata" => Some(Self::ssd()),
            "hdd" => Some(Self::hdd()),
            _ => None,
        }
    }

    /// Parse a preset name, or `key=value` pairs separated by commas, optionally
    /// on top of a preset: `hdd,latency_us=8000` or `latency_us=100,jitter_us=5`.
    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let mut parts = text.split(',').map(str::trim).filter(|p| !p.is_empty());
        let first = parts
            .next()
            .ok_or_else(|| ProfileError::Unknown(text.to_string()))?;
        let (mut profile, rest): (Self, Vec<&str>) = match Self::preset(first) {
            Some(p) => (p, parts.collect()),
            None if first.contains('=') => {
                let base = Self {
                    latency_us: 0,
                    bandwidth_mib_s: None,
                    jitter_us: 0,
                    parallelism: default_parallelism(),
                    burst_pages: default_burst(),
                };
                (base, std::iter::once(first).chain(parts).collect())
            }
            None => return Err(ProfileError::Unknown(text.to_string())),
        };
        for part in rest {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| ProfileError::Unknown(part.to_string()))?;
            let bad = |why| ProfileError::Value {
                field: key.to_string(),
                value: value.to_string(),
                why,
            };
            let int = || value.parse::<u64>().map_err(|_| bad("not a whole number"));
            match key {
                "latency_us" => profile.latency_us = int()?,
                "jitter_us" => profile.jitter_us = int()?,
                "parallelism" => {
                    profile.parallelism = u32::try_from(int()?).map_err(|_| bad("too large"))?
                }
                "burst_pages" => {
                    profile.burst_pages = u32::try_from(int()?).map_err(|_| bad("too large"))?
                }
                "bandwidth_mib_s" => {
                    let v = value.parse::<f64>().map_err(|_| bad("not a number"))?;
                    profile.bandwidth_mib_s = Some(v);
                }
                other => return Err(ProfileError::Field(other.to_string())),
            }
        }
        profile.validate()?;
        Ok(profile)
    }

    /// Check the values make sense (used after parsing or deserializing).
    pub fn validate(&self) -> Result<(), ProfileError> {
        let bad = |field: &str, value: String, why| ProfileError::Value {
            field: field.to_string(),
            value,
            why,
        };
        if self.parallelism == 0 {
            return Err(bad("parallelism", "0".into(), "must be at least 1"));
        }
        if self.burst_pages == 0 {
            return Err(bad("burst_pages", "0".into(), "must be at least 1"));
        }
        if let Some(bw) = self.bandwidth_mib_s {
            if !(bw.is_finite() && bw > 0.0) {
                return Err(bad(
                    "bandwidth_mib_s",
                    bw.to_string(),
                    "must be a positive number",
                ));
            }
        }
        Ok(())
    }

    /// Time one page occupies the bandwidth limit.
    pub(crate) fn page_transfer_time(&self) -> Duration {
        match self.bandwidth_mib_s {
            Some(bw) => Duration::from_secs_f64(super::PAGE_SIZE as f64 / (bw * 1024.0 * 1024.0)),
            None => Duration::ZERO,
        }
    }
}

impl std::str::FromStr for DeviceProfile {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
