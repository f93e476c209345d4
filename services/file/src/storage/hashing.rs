//! SHA-256 off the async threads, batch by batch in order, beside whatever the bytes are doing
//! meanwhile: the thread that receives an upload only counts and forwards its bytes, so hashing
//! and receiving run on different cores.
//!
//! Used for every write larger than one request: an S3 multipart upload (hashed beside its
//! parts' requests) and a local staging file (hashed beside the thread that copies and writes
//! it); and for objects small enough for one request (hashed before it).

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::task::{JoinError, JoinHandle};

use super::digest::Sha256Digest;

/// Batches at most this large are hashed in line: handing them to a blocking thread would cost
/// more than hashing them.
const INLINE_BYTES: usize = 64 * 1024;

/// Hashes batches of chunks on blocking threads, one batch at a time and in the order given, so
/// at most one batch is held here beyond what the caller holds.
#[derive(Default)]
pub(crate) struct BackgroundHasher {
    /// The state so far, while no batch is being hashed.
    hasher: Sha256,
    /// The batch being hashed; it hands the hasher back.
    running: Option<JoinHandle<Sha256>>,
}

impl BackgroundHasher {
    /// Starts hashing `chunks` once the batch before is done, and returns without waiting for
    /// it.
    pub(crate) async fn add(&mut self, chunks: Vec<Bytes>) -> Result<(), JoinError> {
        let mut hasher = self.idle().await?;
        self.running = Some(tokio::task::spawn_blocking(move || {
            update(&mut hasher, &chunks);
            hasher
        }));
        Ok(())
    }

    /// Hashes `last` after everything before it, and returns the digest of the whole.
    pub(crate) async fn finish(mut self, last: Vec<Bytes>) -> Result<Sha256Digest, JoinError> {
        let mut hasher = self.idle().await?;
        if last.iter().map(Bytes::len).sum::<usize>() > INLINE_BYTES {
            hasher = tokio::task::spawn_blocking(move || {
                update(&mut hasher, &last);
                hasher
            })
            .await?;
        } else {
            update(&mut hasher, &last);
        }
        Ok(Sha256Digest::from_hasher(hasher))
    }

    /// The hasher, once the batch being hashed (if any) is done.
    async fn idle(&mut self) -> Result<Sha256, JoinError> {
        match self.running.take() {
            Some(running) => running.await,
            None => Ok(std::mem::take(&mut self.hasher)),
        }
    }
}

/// Feeds `chunks` to `hasher`, in order.
pub(crate) fn update(hasher: &mut Sha256, chunks: &[Bytes]) {
    chunks.iter().for_each(|chunk| hasher.update(chunk));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_hash_as_one_stream_whatever_their_sizes() {
        let body: Vec<u8> = (0..300_000_u32).map(|i| (i % 251) as u8).collect();
        let body = Bytes::from(body);
        let mut hasher = BackgroundHasher::default();
        // Each batch on a blocking thread of its own, one after the other: the order holds.
        hasher.add(vec![body.slice(..100_000), body.slice(100_000..100_010)]).await.unwrap();
        hasher.add(vec![body.slice(100_010..100_020)]).await.unwrap();
        hasher.add(Vec::new()).await.unwrap();
        hasher.add(vec![body.slice(100_020..250_000)]).await.unwrap();
        let digest = hasher.finish(vec![body.slice(250_000..)]).await.unwrap();
        assert_eq!(digest, Sha256Digest::of(&body));

        // A large last batch on a blocking thread, a small one in line.
        let large_last = BackgroundHasher::default().finish(vec![body.clone()]).await.unwrap();
        assert_eq!(large_last, Sha256Digest::of(&body));
        assert_eq!(BackgroundHasher::default().finish(Vec::new()).await.unwrap(), Sha256Digest::of(b""));
    }
}
