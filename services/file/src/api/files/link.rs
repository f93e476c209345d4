//! `CreateDownloadUrl`: a download link (see [`crate::links`]) for a file the caller may read.

use flatrender_proto::flatrender::file::v1 as pb;
use time::OffsetDateTime;

use super::super::folders::tree::Lock;
use super::{reachable, require_active};
use crate::FileApi;
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::links::{self, Token};
use crate::model::timestamp;
use crate::validate;

/// A link's lifetime when the request leaves it at 0, in seconds.
pub const DEFAULT_TTL_SECONDS: u32 = 900;
/// The shortest and longest lifetimes a request may ask for, in seconds.
pub const TTL_SECONDS: std::ops::RangeInclusive<u32> = 60..=86_400;

impl FileApi {
    /// Stores a new link to the requested file and returns its URL.
    pub(super) async fn create_link(
        &self,
        actor: &Actor,
        req: &pb::CreateDownloadUrlRequest,
    ) -> Result<pb::CreateDownloadUrlResponse> {
        let id = validate::id("file_id", &req.file_id)?;
        let ttl = ttl_seconds(req.ttl_seconds)?;
        let token = Token::generate();
        let created_by_service = match actor {
            Actor::Service(service) => Some(service.as_str()),
            _ => None,
        };
        let mut tx = self.state.pool.begin().await?;
        // Shared: the file cannot start being deleted before the link exists.
        let file = reachable(&mut *tx, actor, id, Lock::Share).await?;
        require_active(&file)?;
        let expires_at: OffsetDateTime = sqlx::query_scalar(
            "INSERT INTO file_mgr.download_links
                    (token_sha256, file_id, tenant_id, attachment, created_by, created_by_service, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, now() + $7::int * interval '1 second')
             RETURNING expires_at",
        )
        .bind(token.sha256().as_slice())
        .bind(file.id)
        .bind(file.tenant_id)
        .bind(req.attachment)
        .bind(actor.user_id())
        .bind(created_by_service)
        .bind(i32::try_from(ttl).unwrap_or(i32::MAX))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(pb::CreateDownloadUrlResponse {
            url: links::url(&self.state.settings.public_url, &token),
            expires_at: Some(timestamp(expires_at)),
        })
    }
}

/// The lifetime a request asks for: 0 means the default; outside the allowed range is
/// `INVALID_ARGUMENT`.
fn ttl_seconds(requested: u32) -> Result<u32> {
    match requested {
        0 => Ok(DEFAULT_TTL_SECONDS),
        ttl if TTL_SECONDS.contains(&ttl) => Ok(ttl),
        _ => Err(FileError::invalid(
            "ttl_seconds",
            format!("must be {}..={} seconds (0 means {DEFAULT_TTL_SECONDS})", TTL_SECONDS.start(), TTL_SECONDS.end()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(ttl_seconds(0).unwrap(), 900);
        assert_eq!(ttl_seconds(60).unwrap(), 60);
        assert_eq!(ttl_seconds(86_400).unwrap(), 86_400);
        for bad in [1, 59, 86_401, u32::MAX] {
            let err = ttl_seconds(bad).unwrap_err();
            assert_eq!(err.to_string(), "ttl_seconds: must be 60..=86400 seconds (0 means 900)");
        }
    }
}
