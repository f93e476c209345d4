//! Resumable upload sessions over the real service: parts in any order, retries, completion
//! that verifies the whole, abort and expiry, quota reservations under concurrency, listing,
//! and failures that leave no object, no row and no quota change behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod moto;
mod support;

use flatrender_file::storage::{ByteRange, ObjectKey};
use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::common::v1::PageRequest;
use flatrender_proto::flatrender::file::v1 as pb;
use futures_util::TryStreamExt;
use support::{Backend, MIB, Principal, Seed, Service, Uploads, bytes, failure, sha256_hex, stored, upload};
use time::OffsetDateTime;
use tonic::{Code, Status};
use uuid::Uuid;

/// A session request for `data` called `name`.
fn start_request(name: &str, data: &[u8], preferred_part: usize) -> pb::StartUploadSessionRequest {
    pb::StartUploadSessionRequest {
        target: Some(pb::UploadTarget { name: name.into(), ..Default::default() }),
        size_bytes: data.len() as u64,
        sha256: sha256_hex(data),
        preferred_part_size_bytes: preferred_part as u64,
        idempotency_key: String::new(),
    }
}

async fn start(client: &mut Uploads, request: pb::StartUploadSessionRequest) -> Result<pb::UploadSession, Status> {
    Ok(client.start_upload_session(request).await?.into_inner().session.expect("a session"))
}

/// Sends part `number` of `data` cut into parts of the session's size.
async fn part(
    client: &mut Uploads,
    session: &pb::UploadSession,
    data: &[u8],
    number: u32,
) -> Result<pb::UploadPartResponse, Status> {
    let size = session.part_size_bytes as usize;
    let chunk = data.chunks(size).nth(number as usize - 1).expect("a part of the data");
    send_part(client, &session.id, number, chunk.to_vec()).await
}

async fn send_part(
    client: &mut Uploads,
    session: &str,
    number: u32,
    data: Vec<u8>,
) -> Result<pb::UploadPartResponse, Status> {
    let request = pb::UploadPartRequest {
        session_id: session.into(),
        part_number: number,
        data: data.into(),
        sha256: String::new(),
    };
    Ok(client.upload_part(request).await?.into_inner())
}

async fn complete(client: &mut Uploads, session: &str) -> Result<pb::CompleteUploadSessionResponse, Status> {
    let request = pb::CompleteUploadSessionRequest { session_id: session.into() };
    Ok(client.complete_upload_session(request).await?.into_inner())
}

async fn abort(client: &mut Uploads, session: &str) -> Result<pb::UploadSession, Status> {
    let request = pb::AbortUploadSessionRequest { session_id: session.into() };
    Ok(client.abort_upload_session(request).await?.into_inner().session.expect("a session"))
}

async fn get(client: &mut Uploads, session: &str) -> Result<pb::GetUploadSessionResponse, Status> {
    let request = pb::GetUploadSessionRequest { session_id: session.into() };
    Ok(client.get_upload_session(request).await?.into_inner())
}

async fn list(
    client: &mut Uploads,
    state: pb::UploadSessionState,
    page_size: u32,
    page_token: &str,
) -> Result<(Vec<String>, String), Status> {
    let request = pb::ListUploadSessionsRequest {
        page: Some(PageRequest { page_size, page_token: page_token.into() }),
        state: state as i32,
    };
    let response = client.list_upload_sessions(request).await?.into_inner();
    let ids = response.sessions.into_iter().map(|session| session.id).collect();
    Ok((ids, response.page.unwrap_or_default().next_page_token))
}

/// Keys of the objects under `uploads/`.
async fn part_objects(service: &Service) -> Vec<String> {
    service.object_keys().await.into_iter().filter(|key| key.starts_with("uploads/")).collect()
}

/// About 11 MiB in 5 MiB parts, sent last part first.
async fn round_trip(backend: Backend) {
    let service = Service::start_with(backend, |_| {}).await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    let data = [b"\x89PNG\r\n\x1a\n".as_slice(), &bytes(10, 11 * MIB - 8 + 1234)].concat();
    let size = data.len() as i64;

    let mut request = start_request("film.png", &data, 5 * MIB);
    request.target.as_mut().unwrap().content_type_hint = "text/plain".into();
    let session = start(&mut client, request).await.unwrap();
    assert_eq!((session.part_size_bytes, session.part_count), (5 * MIB as u64, 3));
    assert_eq!(session.state, pb::UploadSessionState::Active as i32);
    assert_eq!((session.declared_size_bytes, session.declared_sha256.clone()), (data.len() as u64, sha256_hex(&data)));
    assert_eq!(
        (session.owner_user_id.clone(), session.content_type_hint.as_str()),
        (user.user.to_string(), "text/plain")
    );
    assert!(session.parts.is_empty() && session.received_bytes == 0);
    let expires = session.expires_at.unwrap().seconds - session.created_at.unwrap().seconds;
    assert!((86_000..=86_400).contains(&expires), "{expires}");
    assert_eq!(service.quota_usage(tenant, Some(user.user)).await, (0, size, 0));
    assert_eq!(service.quota_usage(tenant, None).await, (0, size, 0));

    let third = part(&mut client, &session, &data, 3).await.unwrap();
    assert_eq!(third.parts_received, 1);
    let last = third.part.unwrap();
    assert_eq!((last.part_number, last.size_bytes), (3, (data.len() - 10 * MIB) as u64));
    assert_eq!(last.sha256, sha256_hex(&data[10 * MIB..]));
    let halfway = get(&mut client, &session.id).await.unwrap();
    assert_eq!(halfway.missing_part_numbers, vec![1, 2]);
    assert_eq!(halfway.session.unwrap().received_bytes, last.size_bytes);
    assert_eq!(part(&mut client, &session, &data, 2).await.unwrap().parts_received, 2);
    assert_eq!(part(&mut client, &session, &data, 1).await.unwrap().parts_received, 3);
    assert_eq!(part_objects(&service).await.len(), 3);
    let full = get(&mut client, &session.id).await.unwrap();
    assert!(full.missing_part_numbers.is_empty());
    let full = full.session.unwrap();
    assert_eq!(full.parts.iter().map(|p| p.part_number).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(full.received_bytes, data.len() as u64);

    let done = complete(&mut client, &session.id).await.unwrap();
    let file = done.file.unwrap();
    let completed = done.session.unwrap();
    assert_eq!((file.id.as_str(), completed.file_id.as_str()), (session.id.as_str(), session.id.as_str()));
    assert_eq!(completed.state, pb::UploadSessionState::Completed as i32);
    assert!(completed.completed_at.is_some());
    assert_eq!((file.size_bytes, file.sha256.as_str()), (data.len() as u64, sha256_hex(&data).as_str()));
    assert_eq!(file.content_type, "image/png");
    assert_eq!(stored(&service, &file).await, data);
    assert_eq!(service.object_keys().await, vec![format!("tenants/{tenant}/files/{}", file.id)]);
    assert_eq!(service.rows("upload_parts").await, 0);
    assert_eq!(service.quota_usage(tenant, Some(user.user)).await, (size, 0, 1));
    assert_eq!(service.quota_usage(tenant, None).await, (size, 0, 1));
    assert_eq!(service.events("flatrender.events.v1.FileUploaded").await.len(), 1);

    // Completing again answers the same; nothing more happens.
    let after = service.footprint().await;
    let again = complete(&mut client, &session.id).await.unwrap();
    assert_eq!(again.file.unwrap(), file);
    assert_eq!(service.events("flatrender.events.v1.FileUploaded").await.len(), 1);
    // A part after completion is refused and leaves nothing; so is an abort.
    let (code, message) = failure(part(&mut client, &session, &data, 3).await);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert_eq!(failure(abort(&mut client, &session.id).await).0, Code::FailedPrecondition);
    assert_eq!(service.footprint().await, after);
}

#[tokio::test]
async fn a_session_in_reverse_order_on_local_storage() {
    round_trip(Backend::Local).await;
}

#[tokio::test]
async fn a_session_in_reverse_order_on_s3() {
    round_trip(Backend::S3).await;
}

#[tokio::test]
async fn bad_parts_are_refused_and_leave_nothing_behind() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    let data = bytes(11, 6 * MIB);
    let session = start(&mut client, start_request("a.bin", &data, 5 * MIB)).await.unwrap();
    assert_eq!(session.part_count, 2);
    let before = service.footprint().await;
    let id = session.id.clone();

    let mut wrong_sha = pb::UploadPartRequest {
        session_id: id.clone(),
        part_number: 2,
        data: data[5 * MIB..].to_vec().into(),
        sha256: sha256_hex(b"other"),
    };
    let (code, message) = failure(client.upload_part(wrong_sha.clone()).await);
    assert_eq!((code, message.as_str()), (Code::InvalidArgument, "sha256: mismatch"));
    wrong_sha.sha256 = "not hex".into();
    assert_eq!(failure(client.upload_part(wrong_sha).await).0, Code::InvalidArgument);

    let unknown = Uuid::new_v4().to_string();
    // (case, session id, part number, bytes, code, message part)
    type Case<'a> = (&'a str, &'a str, u32, Vec<u8>, Code, &'a str);
    let cases: Vec<Case> = vec![
        ("part 0", &id, 0, data[..MIB].to_vec(), Code::InvalidArgument, "part_number: must be 1..=2"),
        ("part past the end", &id, 3, data[..MIB].to_vec(), Code::InvalidArgument, "part_number"),
        ("part larger than allowed", &id, 1, data[..5 * MIB + 1].to_vec(), Code::InvalidArgument, "data"),
        ("part too small", &id, 1, data[..MIB].to_vec(), Code::InvalidArgument, "data"),
        ("last part too large", &id, 2, data[..5 * MIB].to_vec(), Code::InvalidArgument, "data"),
        ("malformed id", "nope", 1, data[..MIB].to_vec(), Code::InvalidArgument, "session_id"),
        ("unknown session", &unknown, 1, data[..MIB].to_vec(), Code::NotFound, "upload session"),
    ];
    for (case, session, number, bytes, want_code, want_message) in cases {
        let (code, message) = failure(send_part(&mut client, session, number, bytes).await);
        assert_eq!(code, want_code, "{case}: {message}");
        assert!(message.contains(want_message), "{case}: {message}");
        assert_eq!(service.footprint().await, before, "{case}");
    }

    // Someone else's session does not exist for them, whatever the call.
    let mut stranger = service.uploads(&Principal::user(tenant));
    assert_eq!(failure(part(&mut stranger, &session, &data, 2).await).0, Code::NotFound);
    assert_eq!(failure(get(&mut stranger, &id).await).0, Code::NotFound);
    assert_eq!(failure(complete(&mut stranger, &id).await).0, Code::NotFound);
    assert_eq!(failure(abort(&mut stranger, &id).await).0, Code::NotFound);
    let mut foreign_admin = service.uploads(&Principal::tenant_admin(Uuid::new_v4()));
    assert_eq!(failure(get(&mut foreign_admin, &id).await).0, Code::NotFound);
    assert_eq!(service.footprint().await, before);
    // Their own tenant's admin reaches it.
    let admin = Principal::tenant_admin(tenant);
    assert_eq!(get(&mut service.uploads(&admin), &id).await.unwrap().session.unwrap().id, id);
}

#[tokio::test]
async fn a_retried_part_is_a_no_op_and_different_bytes_replace_it() {
    let service = Service::start().await;
    let user = Principal::user(Uuid::new_v4());
    let mut client = service.uploads(&user);
    let data = bytes(12, 5 * MIB + 1000);
    let session = start(&mut client, start_request("a.bin", &data, 5 * MIB)).await.unwrap();

    let first = part(&mut client, &session, &data, 2).await.unwrap();
    let again = part(&mut client, &session, &data, 2).await.unwrap();
    assert_eq!(again, first, "same bytes: the same part, untouched");
    assert_eq!(again.parts_received, 1);
    assert_eq!(service.rows("upload_parts").await, 1);

    let other = bytes(13, 1000);
    let replaced = send_part(&mut client, &session.id, 2, other.clone()).await.unwrap();
    assert_eq!(replaced.parts_received, 1);
    assert_eq!(replaced.part.unwrap().sha256, sha256_hex(&other));
    let key = ObjectKey::upload_part(session.id.parse().unwrap(), 2).unwrap();
    let read = service.storage.get(&key, ByteRange::ALL).await.unwrap();
    let stored: Vec<bytes::Bytes> = read.bytes.try_collect().await.unwrap();
    assert_eq!(stored.concat(), other);

    // Back to the right bytes, and the upload completes as declared.
    part(&mut client, &session, &data, 2).await.unwrap();
    part(&mut client, &session, &data, 1).await.unwrap();
    let file = complete(&mut client, &session.id).await.unwrap().file.unwrap();
    assert_eq!(file.sha256, sha256_hex(&data));
}

#[tokio::test]
async fn a_wrong_checksum_aborts_the_session_and_leaves_nothing_behind() {
    let service = Service::start().await;
    let user = Principal::user(Uuid::new_v4());
    let mut client = service.uploads(&user);
    upload(&mut client, "existing.bin", b"quotas exist").await.unwrap();
    let before = service.footprint().await;

    let data = bytes(14, 5 * MIB + 10);
    let mut request = start_request("a.bin", &data, 5 * MIB);
    request.sha256 = sha256_hex(b"something else");
    let session = start(&mut client, request).await.unwrap();
    part(&mut client, &session, &data, 1).await.unwrap();
    part(&mut client, &session, &data, 2).await.unwrap();
    let (code, message) = failure(complete(&mut client, &session.id).await);
    assert_eq!((code, message.as_str()), (Code::InvalidArgument, "sha256: mismatch"));

    let aborted = get(&mut client, &session.id).await.unwrap().session.unwrap();
    assert_eq!(aborted.state, pb::UploadSessionState::Aborted as i32);
    assert_eq!(aborted.error_message, "sha256: mismatch");
    assert!(aborted.aborted_at.is_some() && aborted.parts.is_empty());
    assert_eq!(service.footprint().await, before);
    assert_eq!(failure(complete(&mut client, &session.id).await).0, Code::FailedPrecondition);
    assert_eq!(failure(part(&mut client, &session, &data, 2).await).0, Code::FailedPrecondition);
    assert_eq!(service.footprint().await, before);
}

#[tokio::test]
async fn completing_with_missing_parts_lists_them_and_keeps_the_session() {
    let service = Service::start().await;
    let user = Principal::user(Uuid::new_v4());
    let mut client = service.uploads(&user);
    let data = bytes(15, 10 * MIB + 1);
    let session = start(&mut client, start_request("a.bin", &data, 5 * MIB)).await.unwrap();
    part(&mut client, &session, &data, 3).await.unwrap();
    let (code, message) = failure(complete(&mut client, &session.id).await);
    assert_eq!((code, message.as_str()), (Code::FailedPrecondition, "parts missing: 1, 2"));
    let current = get(&mut client, &session.id).await.unwrap();
    assert_eq!(current.session.unwrap().state, pb::UploadSessionState::Active as i32);
    assert_eq!(current.missing_part_numbers, vec![1, 2]);
}

#[tokio::test]
async fn abort_releases_the_reservation_and_removes_the_parts() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    upload(&mut client, "existing.bin", b"quotas exist").await.unwrap();
    let before = service.footprint().await;

    let data = bytes(16, 6 * MIB);
    let session = start(&mut client, start_request("a.bin", &data, 5 * MIB)).await.unwrap();
    part(&mut client, &session, &data, 2).await.unwrap();
    assert_eq!(part_objects(&service).await.len(), 1);
    assert_eq!(service.quota_usage(tenant, Some(user.user)).await.1, data.len() as i64);

    let aborted = abort(&mut client, &session.id).await.unwrap();
    assert_eq!(aborted.state, pb::UploadSessionState::Aborted as i32);
    assert!(aborted.aborted_at.is_some() && aborted.error_message.is_empty());
    assert!(part_objects(&service).await.is_empty());
    assert_eq!(service.footprint().await, before);

    // Idempotent; and nothing more can happen to it.
    assert_eq!(abort(&mut client, &session.id).await.unwrap().state, pb::UploadSessionState::Aborted as i32);
    assert_eq!(failure(complete(&mut client, &session.id).await).0, Code::FailedPrecondition);
    assert_eq!(failure(part(&mut client, &session, &data, 1).await).0, Code::FailedPrecondition);
    assert_eq!(service.footprint().await, before);
}

#[tokio::test]
async fn an_idempotent_start_returns_the_same_session_while_it_is_unfinished() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    let data = bytes(17, 4096);
    let mut request = start_request("a.bin", &data, 0);
    request.idempotency_key = "start-1".into();

    let first = start(&mut client, request.clone()).await.unwrap();
    let again = start(&mut client, request.clone()).await.unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(service.quota_usage(tenant, Some(user.user)).await, (0, 4096, 0), "reserved once");

    let mut other = request.clone();
    other.size_bytes += 1;
    let (code, message) = failure(start(&mut client, other).await);
    assert_eq!(code, Code::AlreadyExists, "{message}");
    let result = start(&mut service.uploads(&Principal::user(tenant)), request.clone()).await;
    assert_eq!(failure(result).0, Code::AlreadyExists, "another caller's key");

    // Once the session is finished the key starts a new one.
    abort(&mut client, &first.id).await.unwrap();
    let next = start(&mut client, request).await.unwrap();
    assert_ne!(next.id, first.id);
}

#[tokio::test]
async fn starts_are_checked_before_anything_is_reserved() {
    let service =
        Service::start_with(Backend::Local, |settings| settings.default_user_quota_bytes = 10 * MIB as u64).await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    let folder = service.seed_folder(tenant, Some(user.user), "Clips").await;
    let seed = Seed {
        tenant,
        owner: Some(user.user),
        folder: Some(folder),
        name: "taken.mp4",
        kind: "asset",
        data: b"x",
        counted: true,
    };
    service.seed_file(seed).await;
    let before = service.footprint().await;
    let data = bytes(18, 1000);
    let changed = |change: &dyn Fn(&mut pb::StartUploadSessionRequest)| {
        let mut request = start_request("a.bin", &data, 0);
        change(&mut request);
        request
    };

    let cases: Vec<(&str, pb::StartUploadSessionRequest, Code, &str)> = vec![
        ("empty", changed(&|r| r.size_bytes = 0), Code::InvalidArgument, "size_bytes"),
        ("too large", changed(&|r| r.size_bytes = 5 << 40 | 1), Code::InvalidArgument, "size_bytes"),
        ("no sha256", changed(&|r| r.sha256 = String::new()), Code::InvalidArgument, "sha256: is required"),
        ("bad sha256", changed(&|r| r.sha256 = "z".repeat(64)), Code::InvalidArgument, "sha256"),
        (
            "small parts",
            changed(&|r| r.preferred_part_size_bytes = MIB as u64),
            Code::InvalidArgument,
            "preferred_part",
        ),
        ("huge parts", changed(&|r| r.preferred_part_size_bytes = 65 * MIB as u64), Code::InvalidArgument, "preferred"),
        ("no target", changed(&|r| r.target = None), Code::InvalidArgument, "target: is required"),
        (
            "bad name",
            changed(&|r| r.target.as_mut().unwrap().name = "../x".into()),
            Code::InvalidArgument,
            "target.name",
        ),
        ("user pins", changed(&|r| r.target.as_mut().unwrap().pinned = true), Code::PermissionDenied, "pinned"),
        (
            "user retains",
            changed(&|r| {
                r.target.as_mut().unwrap().retained_until =
                    Some(prost_types::Timestamp { seconds: 4_102_444_800, nanos: 0 });
            }),
            Code::PermissionDenied,
            "retained_until",
        ),
        (
            "name taken",
            changed(&|r| {
                let target = r.target.as_mut().unwrap();
                target.folder_id = folder.to_string();
                target.name = "taken.mp4".into();
            }),
            Code::AlreadyExists,
            "taken.mp4",
        ),
        ("over quota", changed(&|r| r.size_bytes = 10 * MIB as u64), Code::ResourceExhausted, "quota exceeded"),
    ];
    for (case, request, want_code, want_message) in cases {
        let (code, message) = failure(start(&mut client, request).await);
        assert_eq!(code, want_code, "{case}: {message}");
        assert!(message.contains(want_message), "{case}: {message}");
        assert_eq!(service.footprint().await, before, "{case}");
    }

    // A small file is one part; a huge one gets parts large enough for 10,000 of them.
    let small = start(&mut client, start_request("small.bin", &data, 0)).await.unwrap();
    assert_eq!((small.part_count, small.part_size_bytes), (1, 8 * MIB as u64));
    let render = Principal::service(ServiceName::Render);
    let mut request = start_request("frames.bin", &data, 0);
    request.size_bytes = 80_000 * MIB as u64 + 1;
    let target = request.target.as_mut().unwrap();
    target.tenant_id = tenant.to_string();
    target.counts_toward_quota = Some(false);
    let huge = start(&mut service.uploads(&render), request.clone()).await.unwrap();
    assert_eq!((huge.part_size_bytes, huge.part_count), (9 * MIB as u64, 8889));
}

/// Uploads `data` in one part of `session` and completes it as `who`.
async fn complete_in_one_part(
    service: &Service,
    who: &Principal,
    session: &pb::UploadSession,
    data: &[u8],
) -> pb::File {
    let mut client = service.uploads(who);
    part(&mut client, session, data, 1).await.unwrap();
    complete(&mut client, &session.id).await.unwrap().file.unwrap()
}

/// The file `id` as `who` sees it through `GetFile`.
async fn get_file(service: &Service, who: &Principal, id: &str) -> pb::File {
    let request = pb::GetFileRequest { file_id: id.into() };
    service.files(who).get_file(request).await.unwrap().into_inner().file.unwrap()
}

#[tokio::test]
async fn a_services_session_gives_the_file_its_metadata_and_protection() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let render = Principal::service(ServiceName::Render);
    let data = bytes(21, 3000);
    let until = OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    let mut request = start_request("frame.bin", &data, 0);
    let target = request.target.as_mut().unwrap();
    target.tenant_id = tenant.to_string();
    target.owner_user_id = user.user.to_string();
    target.pinned = true;
    target.retained_until = Some(prost_types::Timestamp { seconds: until, nanos: 0 });
    target.metadata.insert("job".into(), "42".into());
    let session = start(&mut service.uploads(&render), request).await.unwrap();

    // The owner completes it; the file is still the render service's creation.
    let completed = complete_in_one_part(&service, &user, &session, &data).await;
    let file = get_file(&service, &render, &session.id).await;
    assert_eq!(file, completed);
    assert!(file.pinned);
    assert_eq!(file.retained_until.map(|at| at.seconds), Some(until));
    assert_eq!(file.retained_by, pb::ServiceName::Render as i32);
    assert_eq!(file.source_service, pb::ServiceName::Render as i32);
    assert_eq!(file.metadata.get("job").map(String::as_str), Some("42"));
    assert_eq!(file.metadata.len(), 1);
    assert_eq!(file.owner_user_id, user.user.to_string());
}

#[tokio::test]
async fn a_users_session_keeps_its_metadata_and_protects_nothing() {
    let service = Service::start().await;
    let user = Principal::user(Uuid::new_v4());
    let data = bytes(22, 2000);
    let mut request = start_request("notes.txt", &data, 0);
    request.target.as_mut().unwrap().metadata.insert("scene".into(), "intro".into());
    let session = start(&mut service.uploads(&user), request).await.unwrap();

    complete_in_one_part(&service, &user, &session, &data).await;
    let file = get_file(&service, &user, &session.id).await;
    assert_eq!(file.metadata.get("scene").map(String::as_str), Some("intro"));
    assert_eq!(file.metadata.len(), 1);
    assert!(!file.pinned && file.retained_until.is_none());
    assert_eq!(file.retained_by, pb::ServiceName::Unspecified as i32);
    assert_eq!(file.source_service, pb::ServiceName::File as i32);
}

#[tokio::test]
async fn parallel_starts_never_pass_the_quota() {
    let service =
        Service::start_with(Backend::Local, |settings| settings.default_user_quota_bytes = 5 * MIB as u64).await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut tasks = Vec::new();
    for n in 0..16 {
        let mut client = service.uploads(&user);
        let mut request = start_request(&format!("part-{n}.bin"), &[], 0);
        request.size_bytes = MIB as u64;
        request.sha256 = sha256_hex(&[n]);
        tasks.push(tokio::spawn(async move { start(&mut client, request).await }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap().map(|_| Code::Ok).unwrap_or_else(|status| status.code()));
    }
    assert_eq!(codes.iter().filter(|code| **code == Code::Ok).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|code| **code == Code::ResourceExhausted).count(), 11, "{codes:?}");
    let limit = 5 * MIB as i64;
    assert_eq!(service.quota_usage(tenant, Some(user.user)).await, (0, limit, 0));
    assert_eq!(service.quota_usage(tenant, None).await, (0, limit, 0));
    assert_eq!(service.rows("upload_sessions").await, 5);
}

#[tokio::test]
async fn sessions_are_listed_newest_first_for_their_owner_or_admin() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let alice = Principal::user(tenant);
    let bob = Principal::user(tenant);
    let mut client = service.uploads(&alice);
    upload(&mut client, "simple.bin", b"never listed").await.unwrap();
    let data = bytes(19, 1000);
    let mut ids = Vec::new();
    for name in ["one.bin", "two.bin", "three.bin", "four.bin"] {
        ids.push(start(&mut client, start_request(name, &data, 0)).await.unwrap());
    }
    abort(&mut client, &ids[1].id).await.unwrap();
    part(&mut client, &ids[3], &data, 1).await.unwrap();
    complete(&mut client, &ids[3].id).await.unwrap();
    let bobs = start(&mut service.uploads(&bob), start_request("bob.bin", &data, 0)).await.unwrap();
    let id = |n: usize| ids[n].id.clone();

    use pb::UploadSessionState as S;
    assert_eq!(list(&mut client, S::Unspecified, 0, "").await.unwrap(), (vec![id(2), id(0)], String::new()));
    assert_eq!(list(&mut client, S::Aborted, 0, "").await.unwrap().0, vec![id(1)]);
    assert_eq!(list(&mut client, S::Completed, 0, "").await.unwrap().0, vec![id(3)], "simple uploads never show");
    let (first, token) = list(&mut client, S::Unspecified, 1, "").await.unwrap();
    assert_eq!(first, vec![id(2)]);
    assert!(!token.is_empty());
    assert_eq!(list(&mut client, S::Unspecified, 1, &token).await.unwrap(), (vec![id(0)], String::new()));
    let (code, message) = failure(list(&mut client, S::Aborted, 1, &token).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.starts_with("page.page_token"), "{message}");

    let admin = Principal::tenant_admin(tenant);
    let everyone = list(&mut service.uploads(&admin), S::Active, 0, "").await.unwrap().0;
    assert_eq!(everyone, vec![bobs.id.clone(), id(2), id(0)]);
    assert_eq!(list(&mut service.uploads(&bob), S::Unspecified, 0, "").await.unwrap().0, vec![bobs.id]);
    let render = Principal::service(ServiceName::Render);
    assert_eq!(failure(list(&mut service.uploads(&render), S::Unspecified, 0, "").await).0, Code::PermissionDenied);
}

#[tokio::test]
async fn expired_sessions_accept_nothing() {
    let service = Service::start().await;
    let user = Principal::user(Uuid::new_v4());
    let mut client = service.uploads(&user);
    let data = bytes(20, 1000);
    let session = start(&mut client, start_request("a.bin", &data, 0)).await.unwrap();
    part(&mut client, &session, &data, 1).await.unwrap();
    sqlx::query(
        "UPDATE file_mgr.upload_sessions SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day'
          WHERE id = $1",
    )
    .bind(Uuid::parse_str(&session.id).unwrap())
    .execute(service.db.pool())
    .await
    .unwrap();
    let before = service.footprint().await;
    let (code, message) = failure(part(&mut client, &session, &data, 1).await);
    assert_eq!((code, message.as_str()), (Code::FailedPrecondition, "upload session expired"));
    let (code, message) = failure(send_part(&mut client, &session.id, 1, bytes(21, 1000)).await);
    assert_eq!((code, message.as_str()), (Code::FailedPrecondition, "upload session expired"));
    let (code, message) = failure(complete(&mut client, &session.id).await);
    assert_eq!((code, message.as_str()), (Code::FailedPrecondition, "upload session expired"));
    assert_eq!(service.footprint().await, before);
}

#[tokio::test]
async fn a_name_taken_before_completion_keeps_the_session_for_a_retry() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    let folder = service.seed_folder(tenant, Some(user.user), "Clips").await;
    let data = bytes(22, 1000);
    let mut request = start_request("clip.bin", &data, 0);
    request.target.as_mut().unwrap().folder_id = folder.to_string();
    let session = start(&mut client, request).await.unwrap();
    part(&mut client, &session, &data, 1).await.unwrap();
    let seed = Seed {
        tenant,
        owner: Some(user.user),
        folder: Some(folder),
        name: "clip.bin",
        kind: "asset",
        data: b"x",
        counted: true,
    };
    let other = service.seed_file(seed).await;

    let (code, message) = failure(complete(&mut client, &session.id).await);
    assert_eq!(code, Code::AlreadyExists, "{message}");
    let current = get(&mut client, &session.id).await.unwrap().session.unwrap();
    assert_eq!((current.state, current.parts.len()), (pb::UploadSessionState::Active as i32, 1));
    assert_eq!(part_objects(&service).await.len(), 1);

    sqlx::query("UPDATE file_mgr.files SET name = 'renamed.bin' WHERE id = $1")
        .bind(other)
        .execute(service.db.pool())
        .await
        .unwrap();
    let file = complete(&mut client, &session.id).await.unwrap().file.unwrap();
    assert_eq!((file.name.as_str(), file.folder_id), ("clip.bin", folder.to_string()));
}
