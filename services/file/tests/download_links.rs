//! Download links over the real service: `CreateDownloadUrl` and plain HTTP `GET`/`HEAD` of the
//! links on the gRPC listener (through the server's grpc-web, metrics and token layers), on a
//! directory and on S3.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod moto;
mod support;

use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::file::v1 as pb;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use support::{Backend, Principal, Seed, Service, bytes, code, failure, sha256_hex};
use time::OffsetDateTime;
use tonic::Code;
use uuid::Uuid;

/// What every link that does not work answers.
const GONE: &str = "This link does not exist or has expired.\n";

/// `len` bytes that sniff as PNG.
fn png(seed: u64, len: usize) -> Vec<u8> {
    let mut data = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    data.extend(bytes(seed, len - data.len()));
    data
}

/// Seeds a file of `who` (a user) at their root.
async fn seed(service: &Service, who: &Principal, name: &str, data: &[u8]) -> Uuid {
    let seed =
        Seed { tenant: who.tenant, owner: Some(who.user), folder: None, name, kind: "asset", data, counted: true };
    service.seed_file(seed).await
}

fn request(id: Uuid, ttl_seconds: u32, attachment: bool) -> pb::CreateDownloadUrlRequest {
    pb::CreateDownloadUrlRequest { file_id: id.to_string(), ttl_seconds, attachment }
}

/// A new link to `id` as `who`, and its URL on the test server.
async fn link(service: &Service, who: &Principal, id: Uuid, attachment: bool) -> String {
    let created = service.files(who).create_download_url(request(id, 0, attachment)).await.unwrap().into_inner();
    service.on_this_server(&created.url)
}

/// A client without credentials, over HTTP/1.1 as browsers speak to a plain http:// origin.
fn client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

/// An answer: status, headers, body.
struct Answer {
    status: StatusCode,
    version: reqwest::Version,
    headers: HeaderMap,
    body: Vec<u8>,
}

// By hand: a failed assertion prints the headers and size, not megabytes of data.
impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("version", &self.version)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Answer {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(&name).unwrap_or_else(|| panic!("no {name}: {self:?}")).to_str().unwrap()
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let (status, version, headers) = (response.status(), response.version(), response.headers().clone());
    Answer { status, version, headers, body: response.bytes().await.unwrap().to_vec() }
}

async fn get(url: &str, headers: &[(header::HeaderName, &str)]) -> Answer {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    send(request).await
}

async fn downloaded_events(service: &Service) -> Vec<ev::FileDownloaded> {
    let payloads = service.events("flatrender.events.v1.FileDownloaded").await;
    let any = |value| prost_types::Any { type_url: "/flatrender.events.v1.FileDownloaded".into(), value };
    payloads.into_iter().map(|p| any(p).to_msg::<ev::FileDownloaded>().unwrap()).collect()
}

/// RFC 8187 `attr-char`s kept, every other UTF-8 byte as `%XX`.
fn rfc8187(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_link_serves_the_file_with_its_headers_and_records_the_download() {
    let service =
        Service::start_with(Backend::Local, |s| s.public_url = "https://files.example.com/base/".into()).await;
    let alice = Principal::user(Uuid::new_v4());
    let data = png(1, 2 * 1024 * 1024 + 12_345);
    let id = seed(&service, &alice, "picture.png", &data).await;

    let before = OffsetDateTime::now_utc();
    let created = service.files(&alice).create_download_url(request(id, 0, false)).await.unwrap().into_inner();
    let prefix = "https://files.example.com/base/files/v1/links/";
    let token = created.url.strip_prefix(prefix).unwrap_or_else(|| panic!("{} is under the public URL", created.url));
    assert_eq!(token.len(), 43, "32 bytes of base64url: {token}");
    let expires = created.expires_at.unwrap().seconds - before.unix_timestamp();
    assert!((899..=901).contains(&expires), "15 minutes by default: {expires}");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_sha256 FROM file_mgr.download_links")
        .fetch_one(service.db.pool())
        .await
        .unwrap();
    assert_ne!(stored, token.as_bytes(), "only a digest of the token is kept");
    assert_eq!(stored.len(), 32);

    let url = service.on_this_server(&created.url);
    let answer = get(&url, &[]).await;
    assert_eq!((answer.status, answer.version), (StatusCode::OK, reqwest::Version::HTTP_11), "{answer:?}");
    assert!(answer.body == data, "the bytes are the file's");
    assert_eq!(answer.header(header::CONTENT_LENGTH), data.len().to_string());
    assert_eq!(answer.header(header::CONTENT_TYPE), "image/png");
    assert_eq!(answer.header(header::ETAG), format!("\"{}\"", sha256_hex(&data)));
    assert_eq!(answer.header(header::ACCEPT_RANGES), "bytes");
    assert_eq!(
        answer.header(header::CONTENT_DISPOSITION),
        "inline; filename=\"picture.png\"; filename*=UTF-8''picture.png"
    );
    assert_eq!(answer.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert!(answer.header(header::CONTENT_SECURITY_POLICY).starts_with("default-src 'none'"), "{answer:?}");
    assert!(answer.header(header::LAST_MODIFIED).ends_with(" GMT"), "{answer:?}");
    let max_age: u32 = answer.header(header::CACHE_CONTROL).strip_prefix("private, max-age=").unwrap().parse().unwrap();
    assert!((880..=900).contains(&max_age), "the link's time left: {max_age}");

    // Recorded before the client had the last byte: no waiting needed.
    let events = downloaded_events(&service).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].bytes_sent, events[0].complete), (data.len() as u64, true));
    assert_eq!(events[0].file_id, id.to_string());
    assert_eq!(events[0].downloaded_by_user_id, alice.user.to_string(), "the link's creator");
    let accessed: Option<OffsetDateTime> =
        sqlx::query_scalar("SELECT last_accessed_at FROM file_mgr.files WHERE id = $1")
            .bind(id)
            .fetch_one(service.db.pool())
            .await
            .unwrap();
    assert!(accessed.is_some());

    // HTTP/2 (prior knowledge) on the same port answers the same.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let answer = send(h2.get(&url)).await;
    assert_eq!((answer.status, answer.version), (StatusCode::OK, reqwest::Version::HTTP_2), "{answer:?}");
    assert!(answer.body == data);

    // The gRPC API still answers on the same listener.
    service.files(&alice).get_file(pb::GetFileRequest { file_id: id.to_string() }).await.unwrap();
}

#[tokio::test]
async fn head_answers_the_headers_of_get_without_a_body_or_a_record() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let data = png(2, 300_000);
    let id = seed(&service, &alice, "head.png", &data).await;
    let url = link(&service, &alice, id, false).await;

    let head = send(client().head(&url)).await;
    let got = get(&url, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::ETAG,
        header::LAST_MODIFIED,
        header::ACCEPT_RANGES,
        header::CONTENT_DISPOSITION,
    ] {
        assert_eq!(head.header(name.clone()), got.header(name), "{head:?} {got:?}");
    }
    assert_eq!(head.header(header::CONTENT_LENGTH), "300000");
    let ranged = send(client().head(&url).header(header::RANGE, "bytes=10-19")).await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.header(header::CONTENT_RANGE), "bytes 10-19/300000");
    assert_eq!(ranged.header(header::CONTENT_LENGTH), "10");
    assert_eq!(downloaded_events(&service).await.len(), 1, "only the GET");
}

#[tokio::test]
async fn single_ranges_are_partial_and_others_whole() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let data = png(3, 1_500_000);
    let size = data.len();
    let id = seed(&service, &alice, "ranges.png", &data).await;
    let url = link(&service, &alice, id, false).await;
    let etag = format!("\"{}\"", sha256_hex(&data));

    for (range, from, to) in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, size - 1),
        ("bytes=-50", size - 50, size - 1),
        ("bytes=1048570-1048580", 1_048_570, 1_048_580),
        ("bytes=10-99999999", 10, size - 1),
        ("bytes=-99999999", 0, size - 1),
    ] {
        let answer = get(&url, &[(header::RANGE, range)]).await;
        assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT, "{range}: {answer:?}");
        assert_eq!(answer.header(header::CONTENT_RANGE), format!("bytes {from}-{to}/{size}"), "{range}");
        assert_eq!(answer.header(header::CONTENT_LENGTH), (to - from + 1).to_string(), "{range}");
        assert!(answer.body == data[from..=to], "{range}: the bytes of the range");
    }
    let events = downloaded_events(&service).await;
    assert_eq!(events.len(), 6);
    assert_eq!((events[0].bytes_sent, events[0].complete), (100, false), "a range is not the whole file");
    assert!(events[5].complete, "a suffix longer than the file is all of it");

    for range in [format!("bytes={size}-"), format!("bytes={size}-{}", size + 10), "bytes=-0".into()] {
        let answer = get(&url, &[(header::RANGE, &range)]).await;
        assert_eq!(answer.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}: {answer:?}");
        assert_eq!(answer.header(header::CONTENT_RANGE), format!("bytes */{size}"));
        assert!(answer.body.is_empty());
    }
    for (name, value) in [(header::RANGE, "bytes=0-1,5-9"), (header::RANGE, "items=0-1"), (header::RANGE, "bytes=9-5")]
    {
        let answer = get(&url, &[(name, value)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{value}: {answer:?}");
        assert!(answer.body == data, "{value}: the whole file");
    }

    // If-Range: the range only while the validator still holds.
    let answer = get(&url, &[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, "\"other\"")]).await;
    assert_eq!((answer.status, answer.body.len()), (StatusCode::OK, size));
    let answer = get(&url, &[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, &etag)]).await;
    assert_eq!((answer.status, answer.body.as_slice()), (StatusCode::PARTIAL_CONTENT, &data[..10]));
    // If-None-Match with the ETag: not modified.
    let answer = get(&url, &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED, "{answer:?}");
    assert_eq!(answer.header(header::ETAG), etag);
    assert!(answer.body.is_empty());
    let answer = get(&url, &[(header::IF_NONE_MATCH, "\"other\"")]).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn attachments_carry_any_name() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let name = "Отчёт «итог» 100% \"final\" 😀.pdf";
    let data = b"%PDF-1.7\nnot really a document".to_vec();
    let id = seed(&service, &alice, name, &data).await;

    let answer = get(&link(&service, &alice, id, true).await, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header(header::CONTENT_TYPE), "application/pdf");
    let fallback = "_____ ______ 100_ _final_ _.pdf";
    assert_eq!(
        answer.header(header::CONTENT_DISPOSITION),
        format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{}", rfc8187(name))
    );
    let inline = get(&link(&service, &alice, id, false).await, &[]).await;
    assert!(inline.header(header::CONTENT_DISPOSITION).starts_with("inline; filename=\"_____"), "{inline:?}");

    let empty = seed(&service, &alice, "empty.txt", b"").await;
    let answer = get(&link(&service, &alice, empty, true).await, &[]).await;
    assert_eq!((answer.status, answer.header(header::CONTENT_LENGTH), answer.body.len()), (StatusCode::OK, "0", 0));
    let answer = get(&link(&service, &alice, empty, true).await, &[(header::RANGE, "bytes=0-")]).await;
    assert_eq!(answer.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(answer.header(header::CONTENT_RANGE), "bytes */0");
}

#[tokio::test]
async fn expired_unknown_and_malformed_links_are_not_found_alike() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let data = png(4, 1000);
    let id = seed(&service, &alice, "brief.png", &data).await;
    let created = service.files(&alice).create_download_url(request(id, 60, false)).await.unwrap().into_inner();
    let url = service.on_this_server(&created.url);
    let keeper = link(&service, &alice, id, false).await;
    assert_eq!(get(&url, &[]).await.status, StatusCode::OK);

    sqlx::query(
        "UPDATE file_mgr.download_links
            SET created_at = now() - interval '2 minutes', expires_at = now() - interval '1 second'
          WHERE expires_at < now() + interval '61 seconds'",
    )
    .execute(service.db.pool())
    .await
    .unwrap();
    let base = format!("http://{}/files/v1/links/", service.addr);
    let unknown = format!("{base}{}", "A".repeat(43));
    let malformed = format!("{base}not-a-token");
    for url in [&url, &unknown, &malformed, &format!("{url}/more"), &base] {
        for answer in [get(url, &[]).await, send(client().head(url)).await] {
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{url}: {answer:?}");
            assert!(answer.headers.get("grpc-status").is_none(), "{url}: a plain answer: {answer:?}");
        }
    }
    assert_eq!(get(&url, &[]).await.body, GONE.as_bytes(), "a short text that says nothing about why");
    assert_eq!(get(&unknown, &[]).await.body, GONE.as_bytes());
    assert_eq!(get(&keeper, &[]).await.status, StatusCode::OK, "other links keep working");

    // Housekeeping deletes the expired row only.
    let state =
        flatrender_file::State::new(service.db.service_pool(flatrender_file::ROLE), service.settings.clone()).unwrap();
    assert_eq!(flatrender_file::cleanup::delete_expired_links(&state).await.unwrap(), 1);
    assert_eq!(service.rows("download_links").await, 1);
    assert_eq!(flatrender_file::cleanup::delete_expired_links(&state).await.unwrap(), 0);
    assert_eq!(get(&keeper, &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn deleting_the_file_kills_its_links() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let id = seed(&service, &alice, "doomed.png", &png(5, 5000)).await;
    let url = link(&service, &alice, id, false).await;
    let second = link(&service, &alice, id, true).await;
    assert_eq!(get(&url, &[]).await.status, StatusCode::OK);

    // While it is being deleted, it is gone for links, and no new link is made.
    sqlx::query("UPDATE file_mgr.files SET state = 'deleting' WHERE id = $1")
        .bind(id)
        .execute(service.db.pool())
        .await
        .unwrap();
    assert_eq!(get(&url, &[]).await.status, StatusCode::NOT_FOUND);
    let refused = service.files(&alice).create_download_url(request(id, 0, false)).await;
    assert_eq!(code(refused), Code::FailedPrecondition);
    sqlx::query("UPDATE file_mgr.files SET state = 'active' WHERE id = $1")
        .bind(id)
        .execute(service.db.pool())
        .await
        .unwrap();
    assert_eq!(get(&url, &[]).await.status, StatusCode::OK);

    service.files(&alice).delete_file(pb::DeleteFileRequest { file_id: id.to_string() }).await.unwrap();
    for url in [&url, &second] {
        let answer = get(url, &[]).await;
        assert_eq!((answer.status, answer.body.as_slice()), (StatusCode::NOT_FOUND, GONE.as_bytes()));
    }
    assert_eq!(service.rows("download_links").await, 0, "the rows went with the file");
}

#[tokio::test]
async fn links_need_read_access_and_a_valid_lifetime() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let alice = Principal::user(tenant);
    let id = seed(&service, &alice, "mine.png", &png(6, 2000)).await;
    let mut alices = service.files(&alice);

    for who in [Principal::user(tenant), Principal::user(Uuid::new_v4()), Principal::tenant_admin(Uuid::new_v4())] {
        let (code, message) = failure(service.files(&who).create_download_url(request(id, 0, false)).await);
        assert_eq!((code, message.as_str()), (Code::NotFound, "file not found"), "{who:?}");
    }
    let missing = alices.create_download_url(request(Uuid::new_v4(), 0, false)).await;
    assert_eq!(code(missing), Code::NotFound);
    for ttl in [1, 59, 86_401, u32::MAX] {
        let (code, message) = failure(alices.create_download_url(request(id, ttl, false)).await);
        assert_eq!(code, Code::InvalidArgument, "{ttl}");
        assert!(message.starts_with("ttl_seconds: must be 60..=86400"), "{message}");
    }
    let bad_id = pb::CreateDownloadUrlRequest { file_id: "nope".into(), ..Default::default() };
    assert_eq!(code(alices.create_download_url(bad_id).await), Code::InvalidArgument);
    let anonymous =
        pb::file_service_client::FileServiceClient::connect(format!("http://{}", service.addr)).await.unwrap();
    assert_eq!(code(anonymous.clone().create_download_url(request(id, 0, false)).await), Code::Unauthenticated);
    assert_eq!(service.rows("download_links").await, 0, "refused calls leave nothing behind");

    // The owner, their tenant admin, a platform admin and services may; the longest lifetime is a day.
    let before = OffsetDateTime::now_utc().unix_timestamp();
    let longest = alices.create_download_url(request(id, 86_400, false)).await.unwrap().into_inner();
    assert!((86_399..=86_401).contains(&(longest.expires_at.unwrap().seconds - before)));
    for who in [Principal::tenant_admin(tenant), Principal::platform_admin(), Principal::service(ServiceName::Studio)] {
        let url = link(&service, &who, id, false).await;
        assert_eq!(get(&url, &[]).await.status, StatusCode::OK, "{who:?}");
    }
    let creators: Vec<(Option<Uuid>, Option<String>)> = sqlx::query_as(
        "SELECT created_by, created_by_service FROM file_mgr.download_links WHERE tenant_id = $1 ORDER BY created_at, created_by_service NULLS FIRST",
    )
    .bind(tenant)
    .fetch_all(service.db.pool())
    .await
    .unwrap();
    assert_eq!(creators.len(), 4);
    assert_eq!(creators[0], (Some(alice.user), None));
    assert!(creators.contains(&(None, Some("studio".into()))), "{creators:?}");
    // A service's link records no person; its downloads are still events.
    let events = downloaded_events(&service).await;
    assert_eq!(events.len(), 3);
    assert!(events.iter().any(|e| e.downloaded_by_user_id.is_empty()), "{events:?}");
}

#[tokio::test]
async fn the_link_is_the_credential() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let data = png(7, 4096);
    let id = seed(&service, &alice, "open.png", &data).await;
    let url = link(&service, &alice, id, false).await;

    // A browser may send credentials of its own; none is needed and none is looked at.
    for authorization in ["Bearer not-a-token", "Basic dXNlcjpwdw==", "nonsense"] {
        let answer = get(&url, &[(header::AUTHORIZATION, authorization)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{authorization}: {answer:?}");
        assert!(answer.body == data);
    }
    // Other methods are not served.
    let answer = send(client().post(&url)).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{answer:?}");
    // A plain request elsewhere still gets grpc-web's refusal, not a route.
    let answer = get(&format!("http://{}/flatrender.file.v1.FileService/GetFile", service.addr), &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
}

#[tokio::test]
async fn s3_links_serve_whole_files_and_ranges() {
    let service = Service::start_with(Backend::S3, |_| {}).await;
    let alice = Principal::user(Uuid::new_v4());
    let data = png(8, 3 * 1024 * 1024 + 77);
    let id = seed(&service, &alice, "bucket.png", &data).await;
    let url = link(&service, &alice, id, true).await;

    let answer = get(&url, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(answer.body == data);
    assert_eq!(answer.header(header::ETAG), format!("\"{}\"", sha256_hex(&data)));
    assert_eq!(
        answer.header(header::CONTENT_DISPOSITION),
        "attachment; filename=\"bucket.png\"; filename*=UTF-8''bucket.png"
    );
    let answer = get(&url, &[(header::RANGE, "bytes=2097150-2097160")]).await;
    assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT);
    assert!(answer.body == data[2_097_150..=2_097_160]);
    let answer = get(&url, &[(header::RANGE, "bytes=-10")]).await;
    assert!(answer.body == data[data.len() - 10..]);
}
