//! Typed flag values: durations (`10s`, `500ms`), byte sizes (`100`, `4KiB`), core lists
//! (`0,1`, `0-3`) and key distributions (`uniform`, `zipf:0.99`). Pure parsers, one clear
//! message per mistake.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration written as a number and a unit: `us`, `ms`, `s`, `m` or `h` (`0` alone is allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "0" {
            return Ok(Span(Duration::ZERO));
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("`{s}` is not a duration: expected e.g. 10s or 500ms"))?;
        let seconds = match unit {
            "us" => number / 1e6,
            "ms" => number / 1e3,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            "" => return Err(format!("`{s}` needs a unit: us, ms, s, m or h")),
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{s}`: use us, ms, s, m or h"
                ))
            }
        };
        Duration::try_from_secs_f64(seconds)
            .map(Span)
            .map_err(|_| format!("`{s}` is out of range"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A size in bytes: a bare number, or one with `B`, `KiB` or `MiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub usize);

impl FromStr for Bytes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: usize = number
            .parse()
            .map_err(|_| format!("`{s}` is not a size: expected e.g. 100 or 4KiB"))?;
        let multiplier = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`: use B, KiB or MiB"
                ))
            }
        };
        number
            .checked_mul(multiplier)
            .map(Bytes)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

/// A list of CPU cores: comma-separated numbers and inclusive ranges, e.g. `0,2-3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            |part: &str| format!("`{part}` in `{s}` is not a core number or range such as 0-3");
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim) {
            match part.split_once('-') {
                Some((a, b)) => {
                    let a: usize = a.trim().parse().map_err(|_| bad(part))?;
                    let b: usize = b.trim().parse().map_err(|_| bad(part))?;
                    if a > b {
                        return Err(format!("range `{part}` in `{s}` runs backwards"));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(part.parse().map_err(|_| bad(part))?),
            }
        }
        let mut seen = cpus.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != cpus.len() {
            return Err(format!("`{s}` lists a core twice"));
        }
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// How keys are drawn from the key space.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Key of rank `r` (0-based) has weight `1 / (r + 1)^s`.
    Zipf(f64),
}

impl FromStr for KeyDist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "uniform" {
            return Ok(KeyDist::Uniform);
        }
        let exponent = s.strip_prefix("zipf:").ok_or_else(|| {
            format!("`{s}` is not a key distribution: use uniform or zipf:S (e.g. zipf:0.99)")
        })?;
        let exponent: f64 = exponent
            .parse()
            .map_err(|_| format!("`{exponent}` in `{s}` is not a number"))?;
        if !(exponent > 0.0 && exponent <= 10.0) {
            return Err(format!("zipf exponent {exponent} must be in (0, 10]"));
        }
        Ok(KeyDist::Zipf(exponent))
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::Uniform => f.write_str("uniform"),
            KeyDist::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        let ok = [
            ("0", Duration::ZERO),
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("250us", Duration::from_micros(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
        ];
        for (text, want) in ok {
            assert_eq!(text.parse::<Span>(), Ok(Span(want)), "{text}");
        }
        for bad in ["10", "s", "10x", "-1s", ""] {
            assert!(bad.parse::<Span>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!("100".parse::<Bytes>(), Ok(Bytes(100)));
        assert_eq!("100B".parse::<Bytes>(), Ok(Bytes(100)));
        assert_eq!("4KiB".parse::<Bytes>(), Ok(Bytes(4096)));
        assert_eq!("1mib".parse::<Bytes>(), Ok(Bytes(1 << 20)));
        assert!("4KB".parse::<Bytes>().is_err());
        assert!("x".parse::<Bytes>().is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!("1".parse::<CpuList>(), Ok(CpuList(vec![1])));
        assert_eq!("0,1".parse::<CpuList>(), Ok(CpuList(vec![0, 1])));
        assert_eq!("0-2,5".parse::<CpuList>(), Ok(CpuList(vec![0, 1, 2, 5])));
        for bad in ["", "a", "3-1", "0,0", "0-1,1"] {
            assert!(bad.parse::<CpuList>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn key_dists() {
        assert_eq!("uniform".parse::<KeyDist>(), Ok(KeyDist::Uniform));
        assert_eq!("zipf:0.99".parse::<KeyDist>(), Ok(KeyDist::Zipf(0.99)));
        for bad in ["zipf", "zipf:", "zipf:0", "zipf:-1", "normal"] {
            assert!(bad.parse::<KeyDist>().is_err(), "{bad} should be rejected");
        }
        assert_eq!(KeyDist::Zipf(0.99).to_string(), "zipf:0.99");
    }
}
