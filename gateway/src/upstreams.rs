//! Which service answers which proto package, and where remote services live.

use std::str::FromStr;

use http::Uri;

/// A remote service: `SERVICE=URL`, e.g. `render=http://flatrender-render:50051`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Service (target) name.
    pub service: String,
    /// Its gRPC address.
    pub uri: Uri,
}

/// Errors in upstream configuration.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The text is not `SERVICE=URL`.
    #[error("upstream `{0}` must look like render=http://host:50051")]
    Syntax(String),
    /// The service name is unknown.
    #[error("unknown service `{0}` in --upstream; use identity, content, studio, render, file or notification")]
    UnknownService(String),
    /// The URL does not parse.
    #[error("upstream URL `{0}` is invalid: {1}")]
    Uri(String, String),
    /// The URL's scheme is not `http`.
    #[error("upstream URL `{0}`: TLS to upstreams is not supported yet; use http://")]
    Scheme(String),
    /// The descriptor set compiled into the binary is unreadable (a build defect).
    #[error("the compiled API descriptors are unreadable: {0}")]
    Descriptors(String),
}

/// The services that own proto packages.
pub const SERVICES: [&str; 6] = ["identity", "content", "studio", "render", "file", "notification"];

impl FromStr for Upstream {
    type Err = UpstreamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (service, url) = s.split_once('=').ok_or_else(|| UpstreamError::Syntax(s.into()))?;
        let service = service.trim();
        if !SERVICES.contains(&service) {
            return Err(UpstreamError::UnknownService(service.into()));
        }
        let uri: Uri =
            url.trim().parse().map_err(|e: http::uri::InvalidUri| UpstreamError::Uri(url.into(), e.to_string()))?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(UpstreamError::Uri(url.into(), "needs a scheme and host, e.g. http://render:50051".into()));
        }
        // Until upstream TLS lands, anything but plain HTTP/2 would fail at the first call.
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Err(UpstreamError::Scheme(url.trim().into()));
        }
        Ok(Self { service: service.into(), uri })
    }
}

/// The service that serves a proto package (`flatrender.render.v1` → `render`).
pub fn service_of_package(package: &str) -> Option<&'static str> {
    let name = package.strip_prefix("flatrender.")?.split('.').next()?;
    match name {
        // The agent protocol is served by the render orchestrator.
        "agent" => Some("render"),
        other => SERVICES.iter().copied().find(|s| *s == other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstreams() {
        let u: Upstream = "render=http://flatrender-render:50051".parse().unwrap();
        assert_eq!(u.service, "render");
        assert_eq!(u.uri.host(), Some("flatrender-render"));
        assert!(matches!("render".parse::<Upstream>(), Err(UpstreamError::Syntax(_))));
        assert!(matches!("billing=http://x:1".parse::<Upstream>(), Err(UpstreamError::UnknownService(_))));
        assert!(matches!("render=flatrender-render".parse::<Upstream>(), Err(UpstreamError::Uri(..))));
    }

    #[test]
    fn rejects_schemes_other_than_http() {
        for url in ["https://flatrender-render:50051", "grpcs://flatrender-render:50051", "ftp://x:21"] {
            let err = format!("render={url}").parse::<Upstream>().unwrap_err();
            assert!(matches!(err, UpstreamError::Scheme(_)), "{url}: {err:?}");
            assert!(err.to_string().contains("TLS to upstreams is not supported yet; use http://"), "{err}");
        }
        assert!("render=HTTP://flatrender-render:50051".parse::<Upstream>().is_ok());
    }

    #[test]
    fn packages_map_to_services() {
        assert_eq!(service_of_package("flatrender.render.v1"), Some("render"));
        assert_eq!(service_of_package("flatrender.agent.v1"), Some("render"));
        assert_eq!(service_of_package("flatrender.file.v1"), Some("file"));
        assert_eq!(service_of_package("flatrender.events.v1"), None);
        assert_eq!(service_of_package("grpc.health.v1"), None);
    }
}
