//! Downloading a bundle into `<root>/.partial/<sha256>.zip`, resuming from whatever an earlier
//! attempt left there, and verifying size and SHA-256 before the caller uses a byte of it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bundle::BundleRef;
use super::error::{CacheError, IoContext};
use super::fetch::Fetch;

pub(crate) const PARTIAL_DIR: &str = ".partial";

pub(crate) fn partial_path(root: &Path, sha256: &str) -> PathBuf {
    root.join(PARTIAL_DIR).join(format!("{sha256}.zip"))
}

/// Brings the partial file for `bundle` up to its full size. Returns the bytes fetched now.
/// A source error or early end keeps what arrived (the next attempt resumes); a partial longer
/// than the bundle is discarded and fetched anew, as is a source that sends too much.
pub(crate) async fn download(fetch: &impl Fetch, bundle: &BundleRef, partial: &Path) -> Result<u64, CacheError> {
    let sha = bundle.sha256.as_str();
    let mut have = match tokio::fs::metadata(partial).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(CacheError::io(partial, e)),
    };
    if have > bundle.size {
        tokio::fs::remove_file(partial).await.at(partial)?;
        have = 0;
    }
    if have == bundle.size {
        return Ok(0);
    }
    let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(partial).await.at(partial)?;
    let fetch_err = |source| CacheError::Fetch { sha256: sha.to_owned(), source };
    let mut body = fetch.fetch(bundle, have).await.map_err(fetch_err)?;
    let start = have;
    let mut buf = vec![0u8; 64 * 1024];
    let outcome = loop {
        let n = match body.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(fetch_err(e)),
        };
        let n64 = n as u64;
        if have + n64 > bundle.size {
            // More than the bundle's size: not the bundle asked for. Nothing of it is worth
            // resuming from.
            drop(file);
            let _ = tokio::fs::remove_file(partial).await;
            return Err(CacheError::ChecksumMismatch {
                expected: format!("{sha} ({} bytes)", bundle.size),
                actual: format!("more than {} bytes", bundle.size),
            });
        }
        if let Err(e) = file.write_all(&buf[..n]).await {
            break Err(CacheError::io(partial, e));
        }
        have += n64;
    };
    // Flushed and synced also on failure, so a resume starts from bytes that really are there.
    file.sync_all().await.at(partial)?;
    outcome?;
    if have < bundle.size {
        return Err(CacheError::Truncated { sha256: sha.to_owned(), got: have, expected: bundle.size });
    }
    Ok(have - start)
}

/// Checks the complete partial file's SHA-256; a mismatch deletes it (resuming from bad bytes
/// would only fail again).
pub(crate) async fn verify(bundle: &BundleRef, partial: &Path) -> Result<(), CacheError> {
    let mut file = tokio::fs::File::open(partial).await.at(partial)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).await.at(partial)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if actual == bundle.sha256.as_str() && len == bundle.size {
        return Ok(());
    }
    tokio::fs::remove_file(partial).await.at(partial)?;
    Err(CacheError::ChecksumMismatch { expected: bundle.sha256.to_string(), actual: format!("{actual} ({len} bytes)") })
}
