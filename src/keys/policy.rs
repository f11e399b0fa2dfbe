//! Checks on what an admin asks for: names, scopes, IP allow-lists,
//! lifetimes and grace periods.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::error::KeyError;
use crate::config::duration::format_duration;
use crate::config::KeysConfig;

pub fn check_name(name: &str) -> Result<String, KeyError> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 200 || n.chars().any(char::is_control) {
        return Err(KeyError::InvalidName);
    }
    Ok(n.to_string())
}

pub fn check_scopes(scopes: &[String]) -> Result<Vec<String>, KeyError> {
    let mut out: Vec<String> = Vec::new();
    for s in scopes
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let ok = s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b":._-".contains(&b));
        if !ok {
            return Err(KeyError::InvalidScope(s.chars().take(80).collect()));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

/// Addresses and CIDR ranges, stored in canonical form.
pub fn check_allowed_ips(entries: &[String]) -> Result<Vec<String>, KeyError> {
    let mut out: Vec<String> = Vec::new();
    for e in entries
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let canonical = if let Ok(net) = e.parse::<IpNet>() {
            net.trunc().to_string()
        } else if let Ok(ip) = e.parse::<IpAddr>() {
            ip.to_string()
        } else {
            return Err(KeyError::InvalidIp(e.chars().take(80).collect()));
        };
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

/// True when `ip` is allowed by the stored list (an empty list allows all).
/// An IPv4-mapped IPv6 address is matched as the IPv4 address it carries.
pub fn ip_allowed(allowed: &[String], ip: Option<IpAddr>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(ip) = ip else { return false };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    allowed.iter().any(|entry| {
        if let Ok(net) = entry.parse::<IpNet>() {
            net.contains(&ip)
        } else {
            entry.parse::<IpAddr>().is_ok_and(|a| a == ip)
        }
    })
}

pub fn check_lifetime(cfg: &KeysConfig, asked: Option<Duration>) -> Result<Duration, KeyError> {
    let lifetime = asked.unwrap_or(cfg.default_lifetime.as_duration());
    if lifetime.is_zero() {
        return Err(KeyError::LifetimeZero);
    }
    if lifetime > cfg.max_lifetime.as_duration() {
        return Err(KeyError::LifetimeTooLong {
            asked: format_duration(lifetime),
            max: cfg.max_lifetime.to_string(),
        });
    }
    Ok(lifetime)
}

pub fn check_grace(cfg: &KeysConfig, asked: Option<Duration>) -> Result<Duration, KeyError> {
    let grace = asked.unwrap_or(cfg.grace_default.as_duration());
    if grace < cfg.grace_min.as_duration() || grace > cfg.grace_max.as_duration() {
        return Err(KeyError::GraceOutOfBounds {
            asked: format_duration(grace),
            min: cfg.grace_min.to_string(),
            max: cfg.grace_max.to_string(),
        });
    }
    Ok(grace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_lists() {
        let list = check_allowed_ips(&["10.0.0.0/8, 192.168.1.5".into(), "2001:db8::/32".into()]).unwrap();
        assert_eq!(list, vec!["10.0.0.0/8", "192.168.1.5", "2001:db8::/32"]);
        assert!(ip_allowed(&list, Some("10.1.2.3".parse().unwrap())));
        assert!(ip_allowed(&list, Some("::ffff:10.1.2.3".parse().unwrap())));
        assert!(ip_allowed(&list, Some("192.168.1.5".parse().unwrap())));
        assert!(!ip_allowed(&list, Some("192.168.1.6".parse().unwrap())));
        assert!(ip_allowed(&list, Some("2001:db8::1".parse().unwrap())));
        assert!(!ip_allowed(&list, None));
        assert!(ip_allowed(&[], None));
        assert!(check_allowed_ips(&["10.0.0.300".into()]).is_err());
        assert_eq!(check_allowed_ips(&["10.1.2.3/8".into()]).unwrap(), vec!["10.0.0.0/8"]);
    }

    #[test]
    fn scopes() {
        assert_eq!(
            check_scopes(&["read:users,write:products".into(), "read:users".into()])
                .unwrap()
                .len(),
            2
        );
        assert!(check_scopes(&["drop table".into()]).is_err());
    }

    #[test]
    fn bounds() {
        let cfg = KeysConfig::default();
        assert!(check_lifetime(&cfg, Some(Duration::from_secs(91 * 86_400))).is_err());
        assert!(check_grace(&cfg, Some(Duration::from_secs(60))).is_err());
        assert!(check_grace(&cfg, Some(Duration::from_secs(8 * 86_400))).is_err());
        assert_eq!(check_grace(&cfg, None).unwrap(), Duration::from_secs(48 * 3600));
    }
}
