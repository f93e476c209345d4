//! `GET`/`HEAD /files/v1/links/{token}`: a link's file, whole or one byte range.
//!
//! - `200` with `Content-Length`, the sniffed `Content-Type`, `ETag` (the quoted SHA-256: files
//!   never change), `Last-Modified` (when it was stored), `Accept-Ranges: bytes`,
//!   `Cache-Control: private, max-age=<seconds the link has left>` and `Content-Disposition`
//!   (`inline` or `attachment`, with the file's name).
//! - One range → `206` with `Content-Range`; an unsatisfiable one → `416` with
//!   `Content-Range: bytes */<size>` (see [`super::range`]). `If-Range` with another validator
//!   gets the whole file; `If-None-Match` with the ETag gets `304`.
//! - An unknown or expired token, or a file deleted or being deleted: `404` with one short text,
//!   whichever it was.
//! - `HEAD` answers the same headers without reading storage.
//!
//! The body streams from storage in chunks of at most 1 MiB, pulled as the client reads, so
//! memory stays constant. Each `GET` is recorded like a `DownloadFile` call: `last_accessed_at`
//! and a `FileDownloaded` event, written before the client gets the last byte of a complete
//! body (in the background when the client goes away first).
//!
//! Files are user content served from the API's origin, so responses forbid MIME sniffing and
//! carry a Content-Security-Policy that runs no script (an uploaded SVG or text file stays inert
//! when opened directly).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Path, State as Shared};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::BoxFuture;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::Token;
use super::disposition;
use super::range::Requested;
use crate::downloads::{self, Recipient};
use crate::error::{FileError, Result};
use crate::model::{FILE_COLUMNS, FileRecord};
use crate::state::State;
use crate::storage::{ByteRange, ByteStream, StorageError};

/// The answer to every link that does not work, whatever the reason.
const NOT_FOUND: &str = "This link does not exist or has expired.\n";
/// What a browser may do with a link's response when it is opened as a document.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'";

/// A working link: its file and how to serve it.
struct Link {
    file: FileRecord,
    attachment: bool,
    created_by: Option<Uuid>,
    seconds_left: i64,
}

/// Serves the file behind `token`.
pub(super) async fn link(
    Shared(state): Shared<State>,
    Path(token): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match answer(&state, &token, &method, &headers).await {
        Ok(response) => response,
        Err(err) => failure(err),
    }
}

async fn answer(state: &State, token: &str, method: &Method, headers: &HeaderMap) -> Result<Response> {
    let Some(token) = Token::parse(token) else { return Ok(not_found()) };
    let Some(link) = find(state, &token).await? else { return Ok(not_found()) };
    let file = &link.file;
    let etag = format!("\"{}\"", file.sha256.to_hex());
    let last_modified = http_date(file.created_at);
    let mut response = Response::new(Body::empty());
    let out = response.headers_mut();
    out.insert(header::ETAG, value(&etag));
    out.insert(header::LAST_MODIFIED, value(&last_modified));
    out.insert(header::CACHE_CONTROL, value(&format!("private, max-age={}", link.seconds_left.max(0))));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if matches_any(header_text(headers, header::IF_NONE_MATCH), &etag) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(response);
    }
    out.insert(header::CONTENT_TYPE, value(&file.content_type));
    out.insert(header::CONTENT_DISPOSITION, value(&disposition::header_value(link.attachment, &file.name)));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));

    let range_header = header_text(headers, header::RANGE);
    let still_valid = header_text(headers, header::IF_RANGE).is_none_or(|v| v == etag || v == last_modified);
    let requested = if still_valid { Requested::parse(range_header, file.size) } else { Requested::Whole };
    let (offset, length) = match requested {
        Requested::Whole => (0, file.size),
        Requested::Part { offset, length } => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let last = offset + length - 1;
            let content_range = format!("bytes {offset}-{last}/{}", file.size);
            response.headers_mut().insert(header::CONTENT_RANGE, value(&content_range));
            (offset, length)
        }
        Requested::Unsatisfiable => {
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let out = response.headers_mut();
            out.insert(header::CONTENT_RANGE, value(&format!("bytes */{}", file.size)));
            out.remove(header::CONTENT_TYPE);
            out.remove(header::CONTENT_DISPOSITION);
            return Ok(response);
        }
    };
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if method == Method::HEAD {
        return Ok(response);
    }
    let receipt = Receipt {
        state: state.clone(),
        file: link.file,
        recipient: Recipient::Person(link.created_by),
        whole: offset == 0,
    };
    if length == 0 {
        // An empty file: nothing to read.
        receipt.record(0).await;
        return Ok(response);
    }
    // Opened before answering, so a missing object fails the request rather than the body.
    let read = state.storage.get(&receipt.file.object_key()?, ByteRange::new(offset, length)).await?;
    *response.body_mut() = Body::from_stream(Recorded::new(read.bytes, read.length, receipt));
    Ok(response)
}

/// The working link with `token`, with its active file.
async fn find(state: &State, token: &Token) -> Result<Option<Link>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FILE_COLUMNS}, link_attachment, link_created_by, link_seconds_left
           FROM file_mgr.files
           JOIN (SELECT file_id, attachment AS link_attachment, created_by AS link_created_by,
                        floor(extract(epoch FROM expires_at - now()))::bigint AS link_seconds_left
                   FROM file_mgr.download_links
                  WHERE token_sha256 = $1 AND expires_at > now()) AS link
             ON link.file_id = files.id
          WHERE state = 'active'"
    )))
    .bind(token.sha256().as_slice())
    .fetch_optional(&state.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Link {
        file: FileRecord::from_row(&row)?,
        attachment: row.try_get("link_attachment")?,
        created_by: row.try_get("link_created_by")?,
        seconds_left: row.try_get("link_seconds_left")?,
    }))
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], NOT_FOUND).into_response()
}

/// A failure answered in plain text: the gRPC mapping decides what may be said (and logs
/// internal errors with a reference), the code becomes the nearest HTTP status.
fn failure(err: FileError) -> Response {
    let status = tonic::Status::from(err);
    let code = match status.code() {
        tonic::Code::NotFound => return not_found(),
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{}\n", status.message())).into_response()
}

/// A header's value as text; `None` when absent or not visible ASCII.
fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Whether an `If-None-Match` list names `etag` (weak comparison) or is `*`.
fn matches_any(list: Option<&str>, etag: &str) -> bool {
    list.is_some_and(|list| {
        list.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
    })
}

/// A header value built from text that is visible ASCII by construction (digests, numbers,
/// dates, sniffed content types, the encoded disposition); an empty value if it ever is not.
fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `at` as an HTTP date (RFC 9110 IMF-fixdate), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let weekday = &at.weekday().to_string()[..3];
    let month = &at.month().to_string()[..3];
    format!(
        "{weekday}, {:02} {month} {:04} {:02}:{:02}:{:02} GMT",
        at.day(),
        at.year(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// What recording a link download needs.
struct Receipt {
    state: State,
    file: FileRecord,
    recipient: Recipient,
    /// The body starts at the file's first byte.
    whole: bool,
}

impl Receipt {
    /// Records `sent` bytes.
    async fn record(self, sent: u64) {
        let complete = self.whole && sent == self.file.size;
        if let Err(error) = downloads::record(&self.state, &self.file, sent, complete, self.recipient).await {
            tracing::warn!(%error, file = %self.file.id, "could not record a link download");
        }
    }
}

/// A body that records the download: before it yields the last byte of the range (so the record
/// exists once the client has it all; HTTP/1.1 may not poll a body again after its
/// `Content-Length` is reached), or in the background when it breaks off or is dropped early
/// (the client went away).
struct Recorded {
    bytes: ByteStream,
    /// The bytes the range holds.
    length: u64,
    sent: u64,
    /// Until recorded.
    receipt: Option<Receipt>,
    /// The record being written, and the chunk held back until it is.
    ending: Option<(BoxFuture<'static, ()>, Option<Bytes>)>,
}

impl Recorded {
    fn new(bytes: ByteStream, length: u64, receipt: Receipt) -> Self {
        Self { bytes, length, sent: 0, receipt: Some(receipt), ending: None }
    }

    /// Records what was sent so far without waiting for it, once.
    fn record_in_background(&mut self) {
        if let (Some(receipt), Ok(runtime)) = (self.receipt.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(receipt.record(self.sent));
        }
    }
}

impl Stream for Recorded {
    type Item = Result<Bytes, StorageError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some((record, held)) = this.ending.as_mut() {
                if record.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let held = held.take();
                this.ending = None;
                return Poll::Ready(held.map(Ok));
            }
            let next = match this.bytes.as_mut().poll_next(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => return Poll::Pending,
            };
            match next {
                Some(Ok(chunk)) => {
                    this.sent += chunk.len() as u64;
                    match this.receipt.take() {
                        Some(receipt) if this.sent >= this.length => {
                            this.ending = Some((Box::pin(receipt.record(this.sent)), Some(chunk)));
                        }
                        receipt => {
                            this.receipt = receipt;
                            return Poll::Ready(Some(Ok(chunk)));
                        }
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "a link download broke off");
                    this.record_in_background();
                    return Poll::Ready(Some(Err(err)));
                }
                // Shorter than its length: hyper fails the response; record what went.
                None => match this.receipt.take() {
                    Some(receipt) => this.ending = Some((Box::pin(receipt.record(this.sent)), None)),
                    None => return Poll::Ready(None),
                },
            }
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.record_in_background();
        // A record already under way finishes on its own.
        if let (Some((record, _)), Ok(runtime)) = (self.ending.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        let at = OffsetDateTime::from_unix_timestamp(784_111_777).unwrap();
        assert_eq!(http_date(at), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn if_none_match_lists() {
        let etag = "\"abc\"";
        assert!(matches_any(Some("\"abc\""), etag));
        assert!(matches_any(Some("\"x\", W/\"abc\""), etag));
        assert!(matches_any(Some("*"), etag));
        assert!(!matches_any(Some("\"abd\""), etag));
        assert!(!matches_any(None, etag));
    }
}
