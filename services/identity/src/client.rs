//! Who is on the other end of a call: the client's address and user agent.
//!
//! The gateway sets `x-forwarded-for` to the address it saw (having dropped whatever a client
//! sent), so the first entry is the client; without it (a direct call) the peer address is.

use std::net::IpAddr;

/// Longest user agent kept (the column's limit).
const MAX_USER_AGENT: usize = 1024;

/// The client of one call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// Its address.
    pub ip: Option<IpAddr>,
    /// Its user agent, cut to 1,024 characters.
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The client of `request`.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let metadata = request.metadata();
        let forwarded = metadata
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok());
        let ip = forwarded.or_else(|| request.remote_addr().map(|a| a.ip()));
        // Browsers cannot set `user-agent` on fetch; grpc-web clients send `x-user-agent` too.
        let user_agent = ["user-agent", "x-user-agent"]
            .iter()
            .find_map(|name| metadata.get(*name).and_then(|v| v.to_str().ok()))
            .map(|ua| ua.chars().take(MAX_USER_AGENT).collect::<String>())
            .filter(|ua| !ua.trim().is_empty());
        Self { ip, user_agent }
    }

    /// The address as the throttle subject.
    pub fn address_key(&self) -> Option<String> {
        self.ip.map(flatrender_kit::client_address::limit_key)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_address_and_user_agent_are_read() {
        let mut request = tonic::Request::new(());
        request.metadata_mut().insert("x-forwarded-for", "203.0.113.7, 10.0.0.1".parse().unwrap());
        request.metadata_mut().insert("user-agent", "grpc-python/1.7".parse().unwrap());
        let client = ClientInfo::of(&request);
        assert_eq!(client.ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(client.user_agent.as_deref(), Some("grpc-python/1.7"));
        assert_eq!(ClientInfo::of(&tonic::Request::new(())), ClientInfo::default());
    }

    #[test]
    fn ipv6_clients_are_throttled_per_slash_64() {
        let client = ClientInfo { ip: Some("2001:db8:1:2:3:4:5:6".parse().unwrap()), user_agent: None };
        assert_eq!(client.address_key().as_deref(), Some("2001:db8:1:2::/64"));
        let mapped = ClientInfo { ip: Some("::ffff:192.0.2.1".parse().unwrap()), user_agent: None };
        assert_eq!(mapped.address_key().as_deref(), Some("192.0.2.1"));
    }
}
