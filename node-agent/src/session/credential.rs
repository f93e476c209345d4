//! The node credential: enrolment's one-time answer (`frn1.<node id>.<secret>`), kept in the
//! state directory with owner-only permissions, so the agent enrols once per machine and the
//! secret is never shown again.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The file name inside the state directory.
const FILE_NAME: &str = "node-credential";

/// A node's identity and the bearer secret that proves it.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCredential {
    node_id: String,
    bearer: String,
}

// The secret stays out of logs and panics.
impl std::fmt::Debug for NodeCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredential").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

/// A credential file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the node credential at {path} is not of the form frn1.<node id>.<secret>; delete it to enrol again")]
    Malformed { path: PathBuf },
    #[error("the node credential at {path} cannot be read or written: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl NodeCredential {
    /// Parses `frn1.<node id>.<secret>`.
    pub fn parse(bearer: &str) -> Option<Self> {
        let bearer = bearer.trim();
        let mut parts = bearer.splitn(3, '.');
        let (Some("frn1"), Some(node_id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        let id_ok = node_id.len() == 36 && node_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        let secret_ok = !secret.is_empty() && secret.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        (id_ok && secret_ok).then(|| Self { node_id: node_id.to_string(), bearer: bearer.to_string() })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The `authorization` metadata value.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.bearer)
    }

    /// The stored credential, if the agent has enrolled.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, CredentialError> {
        let path = state_dir.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).map(Some).ok_or(CredentialError::Malformed { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CredentialError::Io { path, source }),
        }
    }

    /// Stores the credential, readable by the agent's user only, replacing the file whole.
    pub fn store(&self, state_dir: &Path) -> Result<(), CredentialError> {
        let path = state_dir.join(FILE_NAME);
        let io_error = |source| CredentialError::Io { path: path.clone(), source };
        std::fs::create_dir_all(state_dir).map_err(io_error)?;
        let temp = state_dir.join(format!(".{FILE_NAME}.tmp"));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp).map_err(io_error)?;
        file.write_all(self.bearer.as_bytes()).and_then(|()| file.sync_all()).map_err(io_error)?;
        std::fs::rename(&temp, &path).map_err(io_error)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = "frn1.0190f0c2-6d3a-7c1e-9a3b-5f2e1d0c9b8a.q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6j7k8l9z0x1c";

    #[test]
    fn credentials_parse_and_hide_their_secret() {
        let credential = NodeCredential::parse(GOOD).unwrap();
        assert_eq!(credential.node_id(), "0190f0c2-6d3a-7c1e-9a3b-5f2e1d0c9b8a");
        assert_eq!(credential.authorization(), format!("Bearer {GOOD}"));
        assert!(!format!("{credential:?}").contains("q1w2e3"));
        for bad in [
            "",
            "frn1.",
            "frj1.0190f0c2-6d3a-7c1e-9a3b-5f2e1d0c9b8a.abc",
            "frn1.not-a-uuid.abc",
            "frn1.0190f0c2-6d3a-7c1e-9a3b-5f2e1d0c9b8a.a b",
        ] {
            assert!(NodeCredential::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_stored_credential_loads_back_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(NodeCredential::load(&state).unwrap().is_none(), "not enrolled yet");
        let credential = NodeCredential::parse(GOOD).unwrap();
        credential.store(&state).unwrap();
        assert_eq!(NodeCredential::load(&state).unwrap(), Some(credential));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(state.join(FILE_NAME)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(state.join(FILE_NAME), "garbage").unwrap();
        assert!(matches!(NodeCredential::load(&state), Err(CredentialError::Malformed { .. })));
    }
}
