//! `UploadService.UploadFile` over the real service: verified bytes, sniffed types, quota
//! reservations that never let parallel uploads pass a limit, idempotency, and failures that
//! leave no object, no row and no quota change behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod moto;
mod support;

use std::collections::HashMap;

use flatrender_kit::auth::ServiceName;
use flatrender_kit::outbox::Event;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::file::v1 as pb;
use pb::upload_file_request::Payload;
use support::{
    Backend, MIB, Principal, Seed, Service, bytes, failure, messages, metadata, send, sha256_hex, stored, upload,
};
use tonic::Code;
use uuid::Uuid;

/// The outbox's `FileUploaded` events.
async fn uploaded_events(service: &Service) -> Vec<ev::FileUploaded> {
    let name = "flatrender.events.v1.FileUploaded";
    let mut events = Vec::new();
    for payload in service.events(name).await {
        let event = Event {
            id: 0,
            event_type: name.into(),
            source: "file".into(),
            aggregate_type: "file".into(),
            aggregate_id: String::new(),
            tenant_id: None,
            payload,
            trace_context: serde_json::Value::Null,
            created_at: time::OffsetDateTime::now_utc(),
        };
        events.push(event.decode::<ev::FileUploaded>().unwrap().unwrap());
    }
    events
}

#[tokio::test]
async fn a_simple_upload_stores_verified_bytes_and_charges_the_quota() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let folder = service.seed_folder(tenant, Some(user.user), "Documents").await;
    let mut data = b"%PDF-1.7\n".to_vec();
    data.extend(bytes(1, 2 * MIB + 123));
    let mut meta = metadata("report 2026.pdf", &data);
    let target = meta.target.as_mut().unwrap();
    target.folder_id = folder.to_string();
    target.kind = pb::FileKind::Asset as i32;
    target.content_type_hint = "application/x-whatever".into();
    target.metadata = HashMap::from([("scene".to_owned(), "1".to_owned())]);

    let file = send(&mut service.uploads(&user), messages(meta, &data, MIB)).await.unwrap();

    assert_eq!(file.name, "report 2026.pdf");
    assert_eq!((file.tenant_id.clone(), file.owner_user_id.clone()), (tenant.to_string(), user.user.to_string()));
    assert_eq!(file.folder_id, folder.to_string());
    assert_eq!(file.size_bytes, data.len() as u64);
    assert_eq!(file.sha256, sha256_hex(&data));
    assert_eq!(file.content_type, "application/pdf");
    assert_eq!(file.kind, pb::FileKind::Asset as i32);
    assert_eq!(file.state, pb::FileState::Active as i32);
    assert_eq!(file.source_service, pb::ServiceName::File as i32);
    assert!(file.counts_toward_quota && !file.pinned && file.retained_until.is_none());
    assert_eq!(file.metadata.get("scene").map(String::as_str), Some("1"));
    assert_eq!(stored(&service, &file).await, data);
    assert_eq!(service.object_keys().await, vec![format!("tenants/{tenant}/files/{}", file.id)]);

    let size = data.len() as i64;
    assert_eq!(service.quota_usage(tenant, Some(user.user)).await, (size, 0, 1));
    assert_eq!(service.quota_usage(tenant, None).await, (size, 0, 1));
    // The reservation was held by a simple session whose id is the file's.
    let (simple, state, file_id): (bool, String, Option<Uuid>) =
        sqlx::query_as("SELECT simple, state, file_id FROM file_mgr.upload_sessions WHERE id = $1")
            .bind(Uuid::parse_str(&file.id).unwrap())
            .fetch_one(service.db.pool())
            .await
            .unwrap();
    assert_eq!((simple, state.as_str(), file_id.map(|id| id.to_string())), (true, "completed", Some(file.id.clone())));

    let events = uploaded_events(&service).await;
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!((event.file_id.as_str(), event.tenant_id.as_str()), (file.id.as_str(), file.tenant_id.as_str()));
    assert_eq!(
        (event.owner_user_id.as_str(), event.folder_id.as_str()),
        (file.owner_user_id.as_str(), file.folder_id.as_str())
    );
    assert_eq!((event.size_bytes, event.sha256.as_str()), (file.size_bytes, file.sha256.as_str()));
    assert_eq!((event.kind.as_str(), event.content_type.as_str()), ("asset", "application/pdf"));
    assert_eq!(event.name, file.name);
    assert!(event.counts_toward_quota);
}

#[tokio::test]
async fn the_content_type_is_sniffed_not_taken_from_the_hint() {
    let service = Service::start().await;
    let user = Principal::user(Uuid::new_v4());
    let mut client = service.uploads(&user);
    let png = [b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".as_slice(), &bytes(2, 3000)].concat();
    let mut meta = metadata("picture.txt", &png);
    meta.target.as_mut().unwrap().content_type_hint = "text/plain".into();
    let file = send(&mut client, messages(meta, &png, 7)).await.unwrap();
    assert_eq!(file.content_type, "image/png");

    let text = b"hello\nworld\n";
    let file = upload(&mut client, "notes.bin", text).await.unwrap();
    assert_eq!(file.content_type, "text/plain; charset=utf-8");
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_first_file_without_reading_a_byte() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    let data = bytes(3, 100_000);
    let mut meta = metadata("clip.bin", &data);
    meta.idempotency_key = "upload-1".into();
    let first = send(&mut client, messages(meta.clone(), &data, MIB)).await.unwrap();
    let after_first = service.footprint().await;

    // The retry sends no chunk at all: were any read, it would fail as truncated.
    let again = send(&mut client, messages(meta.clone(), &[], MIB)).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(service.footprint().await, after_first);
    assert_eq!(uploaded_events(&service).await.len(), 1);

    // The same key for another request, or by another caller, is refused.
    let mut other = meta.clone();
    other.target.as_mut().unwrap().name = "other.bin".into();
    let (code, message) = failure(send(&mut client, messages(other, &data, MIB)).await);
    assert_eq!(code, Code::AlreadyExists, "{message}");
    assert!(message.contains("idempotency_key"), "{message}");
    let colleague = Principal::user(tenant);
    let result = send(&mut service.uploads(&colleague), messages(meta, &data, MIB)).await;
    assert_eq!(failure(result).0, Code::AlreadyExists);
    assert_eq!(service.footprint().await, after_first);
}

#[tokio::test]
async fn failed_uploads_leave_nothing_behind() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    let folder = service.seed_folder(tenant, Some(user.user), "docs").await;
    let someone_elses = service.seed_folder(tenant, Some(Uuid::new_v4()), "theirs").await;
    let data = bytes(4, 3 * MIB);
    let in_folder = |name: &str, data: &[u8]| {
        let mut meta = metadata(name, data);
        meta.target.as_mut().unwrap().folder_id = folder.to_string();
        meta
    };
    // Something exists already, so the quotas do too.
    send(&mut client, messages(in_folder("taken.bin", &data), &data, MIB)).await.unwrap();
    let before = service.footprint().await;
    let sessions_before = service.rows("upload_sessions").await;

    let chunk = |bytes: Vec<u8>| pb::UploadFileRequest { payload: Some(Payload::Chunk(bytes.into())) };
    let meta_message = |meta: pb::UploadFileMetadata| pb::UploadFileRequest { payload: Some(Payload::Metadata(meta)) };
    let with_target = |change: &dyn Fn(&mut pb::UploadTarget)| {
        let mut meta = metadata("new.bin", &data);
        change(meta.target.as_mut().unwrap());
        messages(meta, &data, MIB)
    };
    let mut wrong_sha = metadata("new.bin", &data);
    wrong_sha.sha256 = sha256_hex(b"something else");
    let big = bytes(5, 6 * MIB);
    let mut wrong_big_sha = metadata("big.bin", &big);
    wrong_big_sha.sha256 = sha256_hex(b"something else");
    let mut oversized = metadata("huge.bin", &data);
    oversized.size_bytes = service.settings.max_simple_upload_bytes + 1;
    let mut bad_sha = metadata("new.bin", &data);
    bad_sha.sha256 = "xyz".into();
    let mut two_metadata = messages(metadata("new.bin", &data), &data[..MIB], MIB);
    two_metadata.push(meta_message(metadata("new.bin", &data)));

    let cases: Vec<(&str, Vec<pb::UploadFileRequest>, Code, &str)> = vec![
        ("wrong checksum", messages(wrong_sha, &data, MIB), Code::InvalidArgument, "sha256: mismatch"),
        ("wrong checksum, multipart", messages(wrong_big_sha, &big, MIB), Code::InvalidArgument, "sha256: mismatch"),
        (
            "stream ends early",
            messages(metadata("new.bin", &data), &data[..2 * MIB], MIB),
            Code::InvalidArgument,
            "size_bytes: received 2097152 of 3145728",
        ),
        (
            "too many bytes",
            messages(metadata("new.bin", &data[..MIB]), &data[..2 * MIB], MIB),
            Code::InvalidArgument,
            "size_bytes: received 2097152 of 1048576",
        ),
        ("chunk too large", messages(metadata("new.bin", &data), &data, MIB + 1), Code::InvalidArgument, "chunk"),
        (
            "empty chunk",
            vec![meta_message(metadata("new.bin", &data)), chunk(Vec::new())],
            Code::InvalidArgument,
            "chunk",
        ),
        ("second metadata", two_metadata, Code::InvalidArgument, "metadata"),
        ("chunk first", vec![chunk(data[..10].to_vec())], Code::InvalidArgument, "metadata"),
        ("nothing at all", Vec::new(), Code::InvalidArgument, "metadata"),
        ("name with ..", with_target(&|t| t.name = "a..b".into()), Code::InvalidArgument, "metadata.target.name"),
        ("name with /", with_target(&|t| t.name = "a/b".into()), Code::InvalidArgument, "metadata.target.name"),
        (
            "control character",
            with_target(&|t| t.name = "a\u{1}b".into()),
            Code::InvalidArgument,
            "metadata.target.name",
        ),
        ("empty name", with_target(&|t| t.name = String::new()), Code::InvalidArgument, "metadata.target.name"),
        ("too large", messages(oversized, &data, MIB), Code::InvalidArgument, "use an upload session"),
        ("malformed sha256", messages(bad_sha, &data, MIB), Code::InvalidArgument, "metadata.sha256"),
        ("user pins", with_target(&|t| t.pinned = true), Code::PermissionDenied, "pinned"),
        ("user uncounted", with_target(&|t| t.counts_toward_quota = Some(false)), Code::PermissionDenied, ""),
        ("another tenant", with_target(&|t| t.tenant_id = Uuid::new_v4().to_string()), Code::NotFound, "tenant"),
        ("another owner", with_target(&|t| t.owner_user_id = Uuid::new_v4().to_string()), Code::PermissionDenied, ""),
        (
            "name taken in the folder",
            messages(in_folder("taken.bin", &data), &data, MIB),
            Code::AlreadyExists,
            "taken.bin",
        ),
        ("unknown folder", with_target(&|t| t.folder_id = Uuid::new_v4().to_string()), Code::NotFound, "folder"),
        ("someone else's folder", with_target(&|t| t.folder_id = someone_elses.to_string()), Code::NotFound, "folder"),
    ];
    for (case, messages, want_code, want_message) in cases {
        let (code, message) = failure(send(&mut client, messages).await);
        assert_eq!(code, want_code, "{case}: {message}");
        assert!(message.contains(want_message), "{case}: {message}");
        assert_eq!(service.footprint().await, before, "{case}");
        assert_eq!(service.rows("upload_sessions").await, sessions_before, "{case}");
    }
}

#[tokio::test]
async fn uploads_over_quota_are_refused_before_any_byte_is_stored() {
    let service =
        Service::start_with(Backend::Local, |settings| settings.default_user_quota_bytes = 2 * MIB as u64).await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    upload(&mut client, "first.bin", &bytes(6, MIB + MIB / 2)).await.unwrap();
    let before = service.footprint().await;

    let data = bytes(7, MIB);
    let (code, message) = failure(upload(&mut client, "second.bin", &data).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.starts_with("quota exceeded: 524288 bytes free"), "{message}");
    // Refused on the metadata alone: no chunk was needed to tell.
    let (code, _) = failure(send(&mut client, messages(metadata("third.bin", &data), &[], MIB)).await);
    assert_eq!(code, Code::ResourceExhausted);
    assert_eq!(service.footprint().await, before);
    assert_eq!(service.events("flatrender.events.v1.QuotaExceeded").await.len(), 1, "at most one an hour");
}

#[tokio::test]
async fn parallel_uploads_never_pass_the_quota() {
    let service =
        Service::start_with(Backend::Local, |settings| settings.default_user_quota_bytes = 5 * MIB as u64).await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut tasks = Vec::new();
    for n in 0..16 {
        let mut client = service.uploads(&user);
        tasks.push(tokio::spawn(async move { upload(&mut client, &format!("part-{n}.bin"), &bytes(n, MIB)).await }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap().map(|_| Code::Ok).unwrap_or_else(|status| status.code()));
    }
    assert_eq!(codes.iter().filter(|code| **code == Code::Ok).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|code| **code == Code::ResourceExhausted).count(), 11, "{codes:?}");
    let limit = 5 * MIB as i64;
    assert_eq!(service.quota_usage(tenant, Some(user.user)).await, (limit, 0, 5));
    assert_eq!(service.quota_usage(tenant, None).await, (limit, 0, 5));
    assert_eq!(service.object_keys().await.len(), 5);
    assert_eq!(service.rows("files").await, 5);
    let unfinished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM file_mgr.upload_sessions WHERE state <> 'completed'")
            .fetch_one(service.db.pool())
            .await
            .unwrap();
    assert_eq!(unfinished, 0);
}

#[tokio::test]
async fn services_and_admins_upload_for_others() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let render = Principal::service(ServiceName::Render);
    let mut client = service.uploads(&render);
    let data = bytes(8, 4000);
    let retained = prost_types::Timestamp { seconds: 4_102_444_800, nanos: 0 };

    // A tenant-owned, uncounted, protected render output.
    let mut meta = metadata("chunk-0001.bin", &data);
    let target = meta.target.as_mut().unwrap();
    target.tenant_id = tenant.to_string();
    target.kind = pb::FileKind::RenderChunk as i32;
    target.counts_toward_quota = Some(false);
    target.pinned = true;
    target.retained_until = Some(retained);
    let file = send(&mut client, messages(meta, &data, MIB)).await.unwrap();
    assert_eq!((file.owner_user_id.as_str(), file.counts_toward_quota, file.pinned), ("", false, true));
    assert_eq!(file.retained_until, Some(retained));
    assert_eq!(file.retained_by, pb::ServiceName::Render as i32);
    assert_eq!(file.source_service, pb::ServiceName::Render as i32);
    assert_eq!(service.quota_usage(tenant, None).await, (0, 0, 0));
    assert_eq!(service.rows("upload_sessions").await, 0, "nothing reserved, so no session");

    // For a user of the tenant: counted on their quota.
    let owner = Uuid::new_v4();
    let mut meta = metadata("voice.bin", &data);
    meta.target.as_mut().unwrap().tenant_id = tenant.to_string();
    meta.target.as_mut().unwrap().owner_user_id = owner.to_string();
    let file = send(&mut client, messages(meta, &data, MIB)).await.unwrap();
    assert_eq!((file.owner_user_id, file.counts_toward_quota), (owner.to_string(), true));
    assert_eq!(service.quota_usage(tenant, Some(owner)).await, (4000, 0, 1));

    // Services must name the tenant.
    let (code, message) = failure(upload(&mut client, "x.bin", &data).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.starts_with("metadata.target.tenant_id"), "{message}");

    // A tenant admin uploads for a user; an empty file counts as a file of no bytes.
    let admin = Principal::tenant_admin(tenant);
    let mut meta = metadata("empty.txt", b"");
    meta.target.as_mut().unwrap().owner_user_id = owner.to_string();
    let file = send(&mut service.uploads(&admin), messages(meta, b"", MIB)).await.unwrap();
    assert_eq!((file.owner_user_id, file.size_bytes), (owner.to_string(), 0));
    assert_eq!(file.sha256, sha256_hex(b""));
    assert_eq!(service.quota_usage(tenant, Some(owner)).await, (4000, 0, 2));
}

#[tokio::test]
async fn a_simple_upload_to_s3() {
    let service = Service::start_with(Backend::S3, |_| {}).await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    // Larger than a part: stored as a multipart upload.
    let data = bytes(9, 6 * MIB + 5);
    let file = upload(&mut client, "movie.bin", &data).await.unwrap();
    assert_eq!(stored(&service, &file).await, data);
    assert_eq!(service.quota_usage(tenant, Some(user.user)).await, (data.len() as i64, 0, 1));

    let before = service.footprint().await;
    let mut meta = metadata("wrong.bin", &data);
    meta.sha256 = sha256_hex(b"not it");
    assert_eq!(failure(send(&mut client, messages(meta, &data, MIB)).await).0, Code::InvalidArgument);
    assert_eq!(service.footprint().await, before);
}

#[tokio::test]
async fn seeded_files_share_the_folder_namespace() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let folder = service.seed_folder(tenant, Some(user.user), "Music").await;
    let seed = Seed {
        tenant,
        owner: Some(user.user),
        folder: Some(folder),
        name: "song.mp3",
        kind: "audio",
        data: b"ID3\x04",
        counted: true,
    };
    service.seed_file(seed).await;
    let data = b"ID3\x04 other";
    let mut meta = metadata("song.mp3", data);
    meta.target.as_mut().unwrap().folder_id = folder.to_string();
    let mut client = service.uploads(&user);
    assert_eq!(failure(send(&mut client, messages(meta.clone(), data, MIB)).await).0, Code::AlreadyExists);
    // The same name at the root is fine.
    meta.target.as_mut().unwrap().folder_id = String::new();
    let file = send(&mut client, messages(meta, data, MIB)).await.unwrap();
    assert_eq!((file.folder_id.as_str(), file.content_type.as_str()), ("", "audio/mpeg"));
}

#[tokio::test]
async fn a_client_that_goes_away_mid_upload_leaves_nothing_behind() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let user = Principal::user(tenant);
    let mut client = service.uploads(&user);
    upload(&mut client, "existing.bin", b"quotas exist").await.unwrap();
    let before = service.footprint().await;

    let data = bytes(23, 3 * MIB);
    let (sender, receiver) = tokio::sync::mpsc::channel::<pb::UploadFileRequest>(4);
    let requests = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|message| (message, receiver))
    });
    let call = tokio::spawn(async move { client.upload_file(requests).await });
    for message in messages(metadata("gone.bin", &data), &data[..MIB], MIB) {
        sender.send(message).await.unwrap();
    }
    // Wait until the service holds the reservation, then vanish without ending the stream.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while service.quota_usage(tenant, Some(user.user)).await.1 == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the upload never reserved its bytes");
        tokio::task::yield_now().await;
    }
    call.abort();
    let _ = call.await;
    loop {
        let now = service.footprint().await;
        if now == before {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "left behind: {now:?}");
        tokio::task::yield_now().await;
    }
    assert_eq!(service.rows("upload_sessions").await, 1, "only the first upload's");
    drop(sender);
}
