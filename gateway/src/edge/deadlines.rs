//! Deadlines for unary calls: a default when the client sets none, and a ceiling.
//!
//! Streaming methods (render watches, downloads, the agent session) are left alone: they live
//! as long as the client wants them.

use std::collections::HashSet;
use std::time::Duration;

use http::HeaderMap;
use http::header::HeaderValue;
use prost::Message as _;

/// Deadline rules.
#[derive(Clone, Debug)]
pub struct Deadlines {
    /// Set on unary calls without a deadline.
    pub default: Duration,
    /// The longest a unary call may ask for.
    pub max: Duration,
    streaming: HashSet<String>,
}

impl Deadlines {
    /// Rules for the methods of the compiled API.
    pub fn new(default: Duration, max: Duration) -> Self {
        let mut streaming = HashSet::new();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(flatrender_proto::FILE_DESCRIPTOR_SET) {
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        if method.client_streaming() || method.server_streaming() {
                            streaming.insert(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                        }
                    }
                }
            }
        }
        Self { default, max, streaming }
    }

    /// Sets or caps `grpc-timeout` for a unary call to `path` (for the services behind another
    /// hop) and returns the deadline the edge itself enforces; `None` for streams.
    pub fn apply(&self, path: &str, headers: &mut HeaderMap) -> Option<Duration> {
        if self.streaming.contains(path) {
            return None;
        }
        let asked = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_timeout);
        let deadline = asked.map_or(self.default, |asked| asked.min(self.max));
        if asked != Some(deadline) {
            // Milliseconds: at most 8 digits, as the gRPC wire format allows.
            let millis = deadline.as_millis().min(99_999_999);
            if let Ok(value) = HeaderValue::from_str(&format!("{millis}m")) {
                headers.insert("grpc-timeout", value);
            }
        }
        Some(deadline)
    }
}

/// A `grpc-timeout` value (`100m`, `5S`, ...).
fn parse_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unary_calls_get_a_bounded_deadline_and_streams_none() {
        let rules = Deadlines::new(Duration::from_secs(30), Duration::from_secs(300));
        let unary = "/flatrender.identity.v1.AuthService/Login";
        let mut none = HeaderMap::new();
        assert_eq!(rules.apply(unary, &mut none), Some(Duration::from_secs(30)));
        assert_eq!(none["grpc-timeout"], "30000m");
        let mut long = HeaderMap::new();
        long.insert("grpc-timeout", HeaderValue::from_static("2H"));
        rules.apply(unary, &mut long);
        assert_eq!(long["grpc-timeout"], "300000m");
        let mut short = HeaderMap::new();
        short.insert("grpc-timeout", HeaderValue::from_static("250m"));
        rules.apply(unary, &mut short);
        assert_eq!(short["grpc-timeout"], "250m");
        let mut watch = HeaderMap::new();
        assert_eq!(rules.apply("/flatrender.render.v1.RenderService/WatchRender", &mut watch), None);
        assert!(watch.is_empty());
        assert_eq!(parse_timeout("9x"), None);
        assert_eq!(parse_timeout("S"), None);
    }
}
