//! What the gateway says about the client, and what it refuses to hear from it.
//!
//! A client may send headers that services would read as facts about the call: its address
//! (`x-forwarded-for`, `x-real-ip`, `forwarded`) or FlatRender's own `x-flatrender-*`. The
//! gateway drops them all and sets `x-forwarded-for` to the address it saw.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::HeaderValue;

/// Headers that describe the call's origin and are only believed from the gateway.
const CLIENT_CLAIMS: [&str; 3] = ["x-forwarded-for", "x-real-ip", "forwarded"];

/// Removes what the client must not decide and records its real address.
pub fn replace_client_claims(headers: &mut HeaderMap, peer: Option<IpAddr>) {
    for name in CLIENT_CLAIMS {
        headers.remove(name);
    }
    let ours: Vec<_> = headers.keys().filter(|name| name.as_str().starts_with("x-flatrender-")).cloned().collect();
    for name in ours {
        headers.remove(name);
    }
    if let Some(value) = peer.and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok()) {
        headers.insert("x-forwarded-for", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_claims_are_replaced_by_the_peer_address() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-flatrender-tenant", "someone-else"),
            ("authorization", "Bearer t"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        replace_client_claims(&mut headers, Some("203.0.113.9".parse().unwrap()));
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "x-forwarded-for"]);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9");
        assert_eq!(
            flatrender_kit::client_address::limit_key("2001:db8:a:b:1:2:3:4".parse().unwrap()),
            "2001:db8:a:b::/64"
        );
    }
}
