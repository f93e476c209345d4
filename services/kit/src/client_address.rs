//! A client's address as limits count it.

use std::net::IpAddr;

/// The key rate limits and login throttles count `ip` under: IPv4 as it is, an IPv4-mapped
/// IPv6 address as its IPv4, and other IPv6 addresses by their /64, which one client holds.
pub fn limit_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}
