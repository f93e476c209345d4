//! How the render service reaches the file service: render checks the files of every submit
//! over gRPC with a service credential it signs itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;
use flatrender_kit::Error;
use flatrender_kit::auth::{DevKeyFiles, TokenSigner};
use flatrender_render::files::FileServiceSettings;

use crate::cli::AuthArgs;

/// Render's file-service client flags.
#[derive(Debug, Args)]
pub struct FileClientArgs {
    /// The file service's gRPC URL for render's file checks, e.g. `http://flatrender-file:50051`.
    /// Default: this process's own gRPC address when it also runs the file target.
    #[arg(long, env = "FLATRENDER_FILE_SERVICE_URL")]
    pub file_service_url: Option<String>,

    /// Private Ed25519 key (PKCS#8 PEM preceded by a `# kid: <key id>` line) that signs this
    /// process's service credentials (render's for the file service, a separate gateway's for
    /// identity); the receiving service's JWKS must hold its public half. Default: the
    /// development key under `<data-dir>/keys`, which the default JWKS trusts.
    #[arg(long, env = "FLATRENDER_SERVICE_KEY_FILE")]
    pub service_key_file: Option<PathBuf>,
}

impl FileClientArgs {
    /// Render's file-service settings; `None` (with a warning) when the file service runs
    /// elsewhere and no URL was given: submits then answer UNAVAILABLE.
    pub fn settings(
        &self,
        file_here: bool,
        grpc_addr: SocketAddr,
        data_dir: &Path,
        auth: &AuthArgs,
    ) -> Result<Option<FileServiceSettings>, Error> {
        let url = match (&self.file_service_url, file_here) {
            (Some(url), _) => url.clone(),
            (None, true) => format!("http://{}", reachable(grpc_addr)),
            (None, false) => {
                tracing::warn!(
                    "render cannot check files: the file target runs elsewhere and --file-service-url is unset"
                );
                return Ok(None);
            }
        };
        let signer = self.service_signer(data_dir, auth)?;
        Ok(Some(FileServiceSettings {
            url,
            signer,
            issuer: auth.token_issuer.clone(),
            audience: auth.token_audience.clone(),
        }))
    }
}

impl FileClientArgs {
    /// What signs this process's service credentials (render's for the file service, a separate
    /// gateway's for identity): `--service-key-file`, else the development key.
    pub fn service_signer(&self, data_dir: &Path, auth: &AuthArgs) -> Result<TokenSigner, Error> {
        let key_files = match &self.service_key_file {
            Some(path) => DevKeyFiles { private_key: path.clone(), jwks: path.clone() },
            None => {
                if auth.jwks_file.is_some() {
                    tracing::warn!(
                        "--jwks-file is set but --service-key-file is not: service credentials are signed with \
                         the development key, which that JWKS may not trust"
                    );
                }
                let files = DevKeyFiles::under(data_dir);
                files.ensure()?;
                files
            }
        };
        key_files.signer()
    }
}

/// An address this process can dial: a wildcard listen address becomes the loopback one.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port()),
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_dialled_on_loopback() {
        assert_eq!(reachable("0.0.0.0:50051".parse().unwrap()).to_string(), "127.0.0.1:50051");
        assert_eq!(reachable("[::]:50051".parse().unwrap()).to_string(), "[::1]:50051");
        assert_eq!(reachable("10.0.0.5:50051".parse().unwrap()).to_string(), "10.0.0.5:50051");
    }
}
