//! Where bundle bytes come from. The cache only needs "the bundle's bytes from this offset on", so
//! the daemon can plug in the orchestrator's DownloadObject (with its resume offset) or a
//! presigned HTTPS URL (with a Range header), and tests an in-memory source.

use std::future::Future;
use std::io;

use tokio::io::AsyncRead;

use super::bundle::BundleRef;

/// The bytes of a bundle from the requested offset to its end.
pub type FetchBody = Box<dyn AsyncRead + Send + Unpin>;

/// A source of template bundles.
pub trait Fetch: Send + Sync + 'static {
    /// Opens `bundle`'s bytes starting at `offset` (0 for a fresh download, the partial file's
    /// length for a resume). The cache stops reading at the bundle's size and verifies whatever
    /// arrives, so the source need not be trusted.
    fn fetch(&self, bundle: &BundleRef, offset: u64) -> impl Future<Output = io::Result<FetchBody>> + Send;
}
