//! Download links: time-limited URLs that serve a file over plain HTTP to whoever holds them
//! (`<img>`/`<video>` tags, browsers, download managers, CDNs), without a bearer token.
//!
//! A link is a row of `file_mgr.download_links` (created by `FileService.CreateDownloadUrl`):
//! the URL carries a [`Token`] of 32 random bytes, the table only its SHA-256. So a link works on
//! every replica without a shared secret, can be revoked by deleting its row, and dies with its
//! file. `GET`/`HEAD` [`ROUTE`] on the gRPC listener serves it (module `serve`); byte ranges follow
//! RFC 9110 ([`range`]), names are sent as RFC 6266/8187 parameters ([`disposition`]).
//! Expired rows are deleted by the cleanup scheduler's housekeeping
//! ([`crate::cleanup::delete_expired_links`]).

pub mod disposition;
pub mod range;
mod serve;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flatrender_kit::server::HttpRoutes;
use sha2::{Digest as _, Sha256};

use crate::state::State;

/// The prefix of the file service's plain HTTP routes.
pub const PREFIX: &str = "/files/v1/";
/// The route that serves a link.
pub const ROUTE: &str = "/files/v1/links/{token}";

/// The plain HTTP routes of the file service, for the server's listener.
pub fn routes(state: State) -> HttpRoutes {
    let router = axum::Router::new().route(ROUTE, axum::routing::get(serve::link)).with_state(state);
    HttpRoutes::new(PREFIX, router)
}

/// The absolute URL of the link with `token`, under `public_url` (with or without a trailing
/// slash).
pub fn url(public_url: &str, token: &Token) -> String {
    format!("{}{}", public_url.trim_end_matches('/'), ROUTE.replace("{token}", &token.to_text()))
}

/// The secret part of a link's URL: 32 random bytes, written as 43 characters of base64url.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // It is a credential: never in logs.
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A fresh random token.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The token written as `text`; `None` unless it is exactly the canonical base64url (no
    /// padding) of 32 bytes.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 43 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// Its text in URLs.
    pub fn to_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// What the database keeps of it.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_and_only_canonically() {
        let token = Token::generate();
        let text = token.to_text();
        assert_eq!(text.len(), 43);
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{text}");
        assert_eq!(Token::parse(&text), Some(token.clone()));
        assert_ne!(Token::generate(), token);
        assert_eq!(token.sha256(), <[u8; 32]>::from(Sha256::digest(token.0)));
        for bad in ["", "abc", &format!("{text}="), &format!("{text}A"), &text.replace(&text[..1], "+")] {
            assert_eq!(Token::parse(bad), None, "{bad}");
        }
        // The last character carries 2 spare bits; text with them set is not the canonical form.
        let last = text.as_bytes()[42];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.iter().position(|&c| c == last).unwrap();
        assert_eq!(index & 3, 0, "{text}");
        let mut noncanonical = text[..42].to_owned();
        noncanonical.push(alphabet[index | 1] as char);
        assert_eq!(Token::parse(&noncanonical), None);
        assert_eq!(format!("{token:?}"), "Token(..)");
    }

    #[test]
    fn urls_join_the_public_url() {
        let token = Token::generate();
        let text = token.to_text();
        assert_eq!(url("http://127.0.0.1:50051", &token), format!("http://127.0.0.1:50051/files/v1/links/{text}"));
        assert_eq!(url("https://cdn.example/api/", &token), format!("https://cdn.example/api/files/v1/links/{text}"));
    }
}
