//! [`Prefix`]: an address prefix (`203.0.113.0/24`, `2001:db8:1::/48`), as `nat_sources`
//! lists them. Written and read as a string everywhere (config, CLI, API, state file).
//!
//! Owns: the type, its text form and containment. Must not touch: what a list of them
//! means (the validator and reconcile).

use std::{fmt, net::IpAddr, str::FromStr};

/// An address prefix. Host bits are zero (the parser refuses others, naming the
/// prefix meant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The longest prefix of the address's family.
    pub fn max_len(addr: IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    /// `addr` with the bits past `len` cleared.
    pub fn masked(addr: IpAddr, len: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let m = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - len.min(32))
                };
                IpAddr::from((u32::from(a) & m).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let m = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len.min(128))
                };
                IpAddr::from((u128::from(a) & m).to_be_bytes())
            }
        }
    }

    /// `ip` is inside this prefix (same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && Self::masked(ip, self.len) == self.addr
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;

    /// `ADDRESS/LEN`; a bare address is the whole address (/32, /128).
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address prefix (203.0.113.0/24)"))?;
        let max = Self::max_len(addr);
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: the length must be 0 to {max}"))?,
        };
        let masked = Self::masked(addr, len);
        if masked != addr {
            return Err(format!(
                "{s:?} has bits set past /{len} (meant {masked}/{len}?)"
            ));
        }
        Ok(Self { addr, len })
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A comma-separated list (`203.0.113.0/24,2001:db8:1::/48`); empty, or `none`, is the
/// empty list.
pub fn parse_list(s: &str) -> Result<Vec<Prefix>, String> {
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Ok(Vec::new());
    }
    s.split(',').map(|p| p.trim().parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_print_and_contain() {
        let p: Prefix = "203.0.113.0/24".parse().unwrap();
        assert_eq!(p.to_string(), "203.0.113.0/24");
        assert!(p.contains("203.0.113.77".parse().unwrap()));
        assert!(!p.contains("203.0.114.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let p6: Prefix = "2001:db8:1::/48".parse().unwrap();
        assert!(p6.contains("2001:db8:1:ffff::9".parse().unwrap()));
        assert_eq!("198.51.100.7".parse::<Prefix>().unwrap().len, 32);
        assert!(
            "203.0.113.5/24"
                .parse::<Prefix>()
                .unwrap_err()
                .contains("203.0.113.0/24")
        );
        assert!("203.0.113.0/33".parse::<Prefix>().is_err());
        assert!("nonsense".parse::<Prefix>().is_err());
        assert_eq!(parse_list("none").unwrap(), vec![]);
        assert_eq!(parse_list("10.0.0.0/8, 192.0.2.0/24").unwrap().len(), 2);
    }
}
