//! FileService over the real service: metadata, listings, updates, copies, deletion, retention
//! and ranged downloads, on a directory and on S3.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod moto;
mod support;

use flatrender_file::storage::ObjectKey;
use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::common::v1::{PageRequest, SortDirection};
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::file::v1 as pb;
use pb::download_file_response::Payload;
use prost_types::FieldMask;
use support::{Backend, Files, Principal, Seed, Service, bytes, code, failure, sha256_hex};
use tonic::Code;
use uuid::Uuid;

/// Seeds a counted file of `who` (a user) into `folder` ("" for the root).
async fn seed(service: &Service, who: &Principal, folder: &str, name: &str, data: &[u8]) -> Uuid {
    seed_kind(service, who, folder, name, "asset", data).await
}

async fn seed_kind(service: &Service, who: &Principal, folder: &str, name: &str, kind: &str, data: &[u8]) -> Uuid {
    let folder = if folder.is_empty() { None } else { Some(folder.parse().unwrap()) };
    let seed = Seed { tenant: who.tenant, owner: Some(who.user), folder, name, kind, data, counted: true };
    service.seed_file(seed).await
}

async fn mkdir(service: &Service, who: &Principal, parent: &str, name: &str) -> pb::Folder {
    let request = pb::CreateFolderRequest { parent_id: parent.into(), name: name.into(), ..Default::default() };
    service.folders(who).create_folder(request).await.unwrap().into_inner().folder.unwrap()
}

async fn get(files: &mut Files, id: &Uuid) -> Result<pb::File, tonic::Status> {
    files.get_file(pb::GetFileRequest { file_id: id.to_string() }).await.map(|r| r.into_inner().file.unwrap())
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

fn any(name: &str, value: Vec<u8>) -> prost_types::Any {
    prost_types::Any { type_url: format!("/flatrender.events.v1.{name}"), value }
}

async fn deleted_events(service: &Service) -> Vec<ev::FileDeleted> {
    let payloads = service.events("flatrender.events.v1.FileDeleted").await;
    payloads.into_iter().map(|p| any("FileDeleted", p).to_msg::<ev::FileDeleted>().unwrap()).collect()
}

async fn uploaded_events(service: &Service) -> Vec<ev::FileUploaded> {
    let payloads = service.events("flatrender.events.v1.FileUploaded").await;
    payloads.into_iter().map(|p| any("FileUploaded", p).to_msg::<ev::FileUploaded>().unwrap()).collect()
}

async fn downloaded_events(service: &Service) -> Vec<ev::FileDownloaded> {
    let payloads = service.events("flatrender.events.v1.FileDownloaded").await;
    payloads.into_iter().map(|p| any("FileDownloaded", p).to_msg::<ev::FileDownloaded>().unwrap()).collect()
}

/// A finished download: its metadata and the sizes of its chunks, and the bytes.
struct Download {
    metadata: pb::DownloadFileMetadata,
    chunks: Vec<usize>,
    data: Vec<u8>,
}

// By hand: a failed assertion prints the sizes, not megabytes of data.
impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download").field("metadata", &self.metadata).field("chunks", &self.chunks).finish()
    }
}

async fn download(files: &mut Files, request: pb::DownloadFileRequest) -> Result<Download, tonic::Status> {
    let mut stream = files.download_file(request).await?.into_inner();
    let Some(first) = stream.message().await? else { panic!("no metadata message") };
    let Some(Payload::Metadata(metadata)) = first.payload else { panic!("the first message is not metadata") };
    let (mut chunks, mut data) = (Vec::new(), Vec::new());
    while let Some(message) = stream.message().await? {
        let Some(Payload::Chunk(chunk)) = message.payload else { panic!("metadata after the first message") };
        chunks.push(chunk.len());
        data.extend_from_slice(&chunk);
    }
    Ok(Download { metadata, chunks, data })
}

fn range(id: &Uuid, offset: u64, length: u64) -> pb::DownloadFileRequest {
    pb::DownloadFileRequest { file_id: id.to_string(), offset, length, ..Default::default() }
}

async fn set_quota(service: &Service, user: Uuid, limit: i64) {
    let updated = sqlx::query("UPDATE file_mgr.quotas SET limit_bytes = $2 WHERE user_id = $1")
        .bind(user)
        .bind(limit)
        .execute(service.db.pool())
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
}

async fn protect(service: &Service, id: Uuid, set: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE file_mgr.files SET {set} WHERE id = $1")))
        .bind(id)
        .execute(service.db.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn files_are_got_one_by_one_and_in_batches() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let data = b"\x89PNG\r\n\x1a\n picture";
    let a = seed(&service, &alice, "", "a.png", data).await;
    let b = seed(&service, &alice, "", "b.png", b"plain text").await;
    let bobs = seed(&service, &Principal::user(alice.tenant), "", "bob.png", b"x").await;
    let foreign = seed(&service, &Principal::user(Uuid::new_v4()), "", "far.png", b"y").await;
    let mut files = service.files(&alice);

    let file = get(&mut files, &a).await.unwrap();
    assert_eq!(
        (file.name.as_str(), file.size_bytes, file.content_type.as_str()),
        ("a.png", data.len() as u64, "image/png")
    );
    assert_eq!(file.sha256, sha256_hex(data));
    assert_eq!(
        (file.owner_user_id.clone(), file.tenant_id.clone()),
        (alice.user.to_string(), alice.tenant.to_string())
    );
    assert_eq!(file.state, pb::FileState::Active as i32);
    for hidden in [&bobs, &foreign, &Uuid::new_v4()] {
        assert_eq!(code(get(&mut files, hidden).await), Code::NotFound);
    }
    let status = files.get_file(pb::GetFileRequest { file_id: "A".into() }).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "file_id: must be a UUID in canonical lower-case form")
    );

    let missing = Uuid::new_v4();
    let ids = [b, foreign, a, b, missing, bobs, a].map(|id| id.to_string()).to_vec();
    let batch = files.batch_get_files(pb::BatchGetFilesRequest { file_ids: ids }).await.unwrap().into_inner();
    let names: Vec<&str> = batch.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["b.png", "a.png"]);
    assert_eq!(batch.missing_ids, [foreign, missing, bobs].map(|id| id.to_string()));

    let admin = Principal::tenant_admin(alice.tenant);
    let ids = [a, bobs, foreign].map(|id| id.to_string()).to_vec();
    let batch = service.files(&admin).batch_get_files(pb::BatchGetFilesRequest { file_ids: ids }).await.unwrap();
    assert_eq!(batch.into_inner().missing_ids, [foreign.to_string()]);

    let none = pb::BatchGetFilesRequest { file_ids: Vec::new() };
    assert_eq!(code(files.batch_get_files(none).await), Code::InvalidArgument);
    let too_many = pb::BatchGetFilesRequest { file_ids: (0..101).map(|_| Uuid::new_v4().to_string()).collect() };
    assert_eq!(code(files.batch_get_files(too_many).await), Code::InvalidArgument);
    // Repeats do not count towards the hundred.
    let ids = (0..150).map(|i| if i < 99 { Uuid::new_v4() } else { a }.to_string()).collect();
    let batch = files.batch_get_files(pb::BatchGetFilesRequest { file_ids: ids }).await.unwrap().into_inner();
    assert_eq!((batch.files.len(), batch.missing_ids.len()), (1, 99));
    let malformed = pb::BatchGetFilesRequest { file_ids: vec![a.to_string(), "nope".into()] };
    let status = files.batch_get_files(malformed).await.unwrap_err();
    assert!(status.message().starts_with("file_ids[1]: "), "{}", status.message());
}

/// Every page of a listing, page by page.
async fn all_pages(files: &mut Files, mut request: pb::ListFilesRequest, size: u32) -> Vec<Vec<pb::File>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        request.page = Some(PageRequest { page_size: size, page_token: token });
        let response = files.list_files(request.clone()).await.unwrap().into_inner();
        pages.push(response.files);
        token = response.page.unwrap().next_page_token;
        if token.is_empty() {
            return pages;
        }
    }
}

fn names(pages: &[Vec<pb::File>]) -> Vec<String> {
    pages.iter().flatten().map(|f| f.name.clone()).collect()
}

/// A stored file's name, size, creation and change times, and id.
type Stored = (String, i64, time::OffsetDateTime, time::OffsetDateTime, Uuid);

/// The names of `rows` in the order a listing sorted by `field` must give.
fn expected_order(rows: &[Stored], field: pb::FileSortField, descending: bool) -> Vec<String> {
    let mut rows = rows.to_vec();
    match field {
        pb::FileSortField::Unspecified => rows.sort_by(|x, y| (&x.0, x.4).cmp(&(&y.0, y.4))),
        pb::FileSortField::Size => rows.sort_by_key(|row| (row.1, row.4)),
        pb::FileSortField::CreatedAt => rows.sort_by_key(|row| (row.2, row.4)),
        pb::FileSortField::UpdatedAt => rows.sort_by_key(|row| (row.3, row.4)),
    }
    if descending {
        rows.reverse();
    }
    rows.into_iter().map(|row| row.0).collect()
}

#[tokio::test]
async fn listings_page_through_every_sort() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    // Sizes, creation and change times each in a different order than the names; two files
    // share a size so the id breaks the tie.
    let sizes = [("c.bin", 30), ("a.bin", 10), ("e.bin", 50), ("b.bin", 30), ("d.bin", 20)];
    let mut ids = Vec::new();
    for (name, size) in sizes {
        ids.push((name, seed(&service, &alice, "", name, &vec![1; size]).await));
    }
    for (i, (_, id)) in ids.iter().enumerate() {
        sqlx::query("UPDATE file_mgr.files SET created_at = now() - make_interval(mins => $2) WHERE id = $1")
            .bind(id)
            .bind(i32::try_from(i).unwrap() * 3 % 5)
            .execute(service.db.pool())
            .await
            .unwrap();
    }
    // The last update sets updated_at: "b" is changed last.
    for name in ["e.bin", "a.bin", "b.bin"] {
        let id = ids.iter().find(|(n, _)| *n == name).unwrap().1;
        let file = pb::File { id: id.to_string(), metadata: [("k".into(), name.into())].into(), ..Default::default() };
        let request = pb::UpdateFileRequest { file: Some(file), update_mask: mask(&["metadata"]) };
        service.files(&alice).update_file(request).await.unwrap();
    }
    seed(&service, &Principal::user(alice.tenant), "", "other-owner.bin", b"z").await;

    // What each sort must give, from the stored values, ties broken by id.
    let rows: Vec<Stored> = sqlx::query_as(
        "SELECT name, size_bytes, created_at, updated_at, id FROM file_mgr.files WHERE owner_user_id = $1",
    )
    .bind(alice.user)
    .fetch_all(service.db.pool())
    .await
    .unwrap();
    let mut files = service.files(&alice);
    let cases = [
        (pb::FileSortField::Unspecified, false),
        (pb::FileSortField::Size, true),
        (pb::FileSortField::CreatedAt, true),
        (pb::FileSortField::UpdatedAt, true),
    ];
    for (field, default_descending) in cases {
        for (direction, descending) in [
            (SortDirection::Unspecified, default_descending),
            (SortDirection::Ascending, false),
            (SortDirection::Descending, true),
        ] {
            let request = pb::ListFilesRequest {
                sort_field: field as i32,
                sort_direction: direction as i32,
                ..Default::default()
            };
            let pages = all_pages(&mut files, request, 2).await;
            assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1], "{field:?} {direction:?}");
            assert_eq!(names(&pages), expected_order(&rows, field, descending), "{field:?} {direction:?}");
        }
    }
    assert_eq!(
        names(&all_pages(&mut files, pb::ListFilesRequest::default(), 0).await),
        ["a.bin", "b.bin", "c.bin", "d.bin", "e.bin"]
    );
    assert_eq!(expected_order(&rows, pb::FileSortField::UpdatedAt, true)[0], "b.bin");

    // A token continues only its own listing.
    let first =
        pb::ListFilesRequest { page: Some(PageRequest { page_size: 1, ..Default::default() }), ..Default::default() };
    let token = files.list_files(first).await.unwrap().into_inner().page.unwrap().next_page_token;
    let other = pb::ListFilesRequest {
        page: Some(PageRequest { page_size: 1, page_token: token.clone() }),
        sort_field: pb::FileSortField::Size as i32,
        ..Default::default()
    };
    assert_eq!(code(files.list_files(other).await), Code::InvalidArgument);
    let forged = pb::ListFilesRequest {
        page: Some(PageRequest { page_size: 1, page_token: format!("{token}x") }),
        ..Default::default()
    };
    assert_eq!(code(files.list_files(forged).await), Code::InvalidArgument);
    let bad_sort = pb::ListFilesRequest { sort_field: 9, ..Default::default() };
    assert_eq!(code(files.list_files(bad_sort).await), Code::InvalidArgument);
}

#[tokio::test]
async fn listings_filter_by_folder_kind_name_and_owner() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let alice = Principal::user(tenant);
    let clips = mkdir(&service, &alice, "", "Clips").await;
    let nested = mkdir(&service, &alice, &clips.id, "Nested").await;
    seed_kind(&service, &alice, "", "Clip-Root.mp4", "asset", b"1").await;
    seed_kind(&service, &alice, "", "50%_off.png", "asset", b"2").await;
    seed_kind(&service, &alice, "", "500.png", "asset", b"3").await;
    seed_kind(&service, &alice, "", "voice.wav", "voiceover", b"4").await;
    seed_kind(&service, &alice, &clips.id, "clip-a.mp4", "asset", b"5").await;
    seed_kind(&service, &alice, &nested.id, "deep-clip.mp4", "export", b"6").await;
    let mut files = service.files(&alice);
    let lister = files.clone();
    let listed = |request| {
        let mut files = lister.clone();
        async move {
            let mut found = names(&all_pages(&mut files, request, 50).await);
            found.sort();
            found
        }
    };
    assert_eq!(listed(pb::ListFilesRequest::default()).await, ["50%_off.png", "500.png", "Clip-Root.mp4", "voice.wav"]);
    let in_clips = pb::ListFilesRequest { folder_id: clips.id.clone(), ..Default::default() };
    assert_eq!(listed(in_clips.clone()).await, ["clip-a.mp4"]);
    assert_eq!(listed(pb::ListFilesRequest { recursive: true, ..in_clips }).await, ["clip-a.mp4", "deep-clip.mp4"]);
    let everything = pb::ListFilesRequest { recursive: true, ..Default::default() };
    assert_eq!(listed(everything.clone()).await.len(), 6);
    let kinds = vec![pb::FileKind::Voiceover as i32, pb::FileKind::Export as i32];
    let by_kind = pb::ListFilesRequest { kinds, ..everything.clone() };
    assert_eq!(listed(by_kind).await, ["deep-clip.mp4", "voice.wav"]);
    let any_kind = pb::ListFilesRequest { kinds: vec![pb::FileKind::Unspecified as i32], ..everything.clone() };
    assert_eq!(listed(any_kind).await.len(), 6);

    let search = |query: &str| pb::ListFilesRequest { name_query: query.into(), ..everything.clone() };
    assert_eq!(listed(search("CLIP")).await, ["Clip-Root.mp4", "clip-a.mp4"], "a prefix, any case");
    assert_eq!(listed(search("*clip")).await, ["Clip-Root.mp4", "clip-a.mp4", "deep-clip.mp4"], "a substring");
    assert_eq!(listed(search("50%")).await, ["50%_off.png"], "% is no wildcard");
    assert_eq!(listed(search("*_o")).await, ["50%_off.png"], "_ is no wildcard");
    assert_eq!(listed(search("*")).await.len(), 6, "an empty search");
    assert_eq!(code(files.list_files(search(&"x".repeat(256))).await), Code::InvalidArgument);

    // Someone else's folder, and acting for others.
    let bob = Principal::user(tenant);
    let bobs = mkdir(&service, &bob, "", "Bob").await;
    let other_folder = pb::ListFilesRequest { folder_id: bobs.id.clone(), ..Default::default() };
    assert_eq!(code(files.list_files(other_folder.clone()).await), Code::NotFound);
    let for_bob = pb::ListFilesRequest { owner_user_id: bob.user.to_string(), ..Default::default() };
    assert_eq!(code(files.list_files(for_bob.clone()).await), Code::PermissionDenied);
    let tenants = pb::ListFilesRequest { tenant_owned: true, ..Default::default() };
    assert_eq!(code(files.list_files(tenants.clone()).await), Code::PermissionDenied);
    let other_tenant = pb::ListFilesRequest { tenant_id: Uuid::new_v4().to_string(), ..Default::default() };
    assert_eq!(code(files.list_files(other_tenant).await), Code::NotFound);

    // Tenant admins and services list anyone's files, and the tenant's own.
    service
        .seed_file(Seed {
            tenant,
            owner: None,
            folder: None,
            name: "logo.png",
            kind: "asset",
            data: b"7",
            counted: true,
        })
        .await;
    let admin = Principal::tenant_admin(tenant);
    let for_alice = pb::ListFilesRequest { owner_user_id: alice.user.to_string(), ..everything.clone() };
    let mut admin_files = service.files(&admin);
    assert_eq!(names(&all_pages(&mut admin_files, for_alice.clone(), 50).await).len(), 6);
    assert_eq!(names(&all_pages(&mut admin_files, tenants.clone(), 50).await), ["logo.png"]);
    let mut render = service.files(&Principal::service(ServiceName::Render));
    assert_eq!(code(render.list_files(for_alice.clone()).await), Code::InvalidArgument, "a service names the tenant");
    let named = pb::ListFilesRequest { tenant_id: tenant.to_string(), ..for_alice };
    assert_eq!(names(&all_pages(&mut render, named, 50).await).len(), 6);
    let tenant_files = pb::ListFilesRequest { tenant_id: tenant.to_string(), ..Default::default() };
    assert_eq!(names(&all_pages(&mut render, tenant_files, 50).await), ["logo.png"]);
    assert!(names(&all_pages(&mut render, other_folder, 50).await).is_empty(), "a folder names its tenant");
}

#[tokio::test]
async fn updates_rename_move_and_replace_metadata() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let docs = mkdir(&service, &alice, "", "Docs").await;
    let id = seed(&service, &alice, "", "draft.txt", b"text").await;
    seed(&service, &alice, &docs.id, "taken.txt", b"other").await;
    seed(&service, &alice, "", "root-twin.txt", b"twin").await;
    let mut files = service.files(&alice);
    let update = |file: pb::File, paths: &[&str]| pb::UpdateFileRequest { file: Some(file), update_mask: mask(paths) };
    let with = |name: &str, folder: &str| pb::File {
        id: id.to_string(),
        name: name.into(),
        folder_id: folder.into(),
        metadata: [("scene".into(), "1".into())].into(),
        ..Default::default()
    };

    let before = service.footprint().await;
    for bad in ["..", "a/b", "a\\b", "bell\u{7}", "", " x"] {
        let status = files.update_file(update(with(bad, ""), &["name"])).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(status.message().starts_with("file.name: "), "{}", status.message());
    }
    for paths in [&[][..], &["size_bytes"][..], &["name", "kind"][..]] {
        assert_eq!(code(files.update_file(update(with("x", ""), paths)).await), Code::InvalidArgument, "{paths:?}");
    }
    let bad_metadata =
        pb::File { id: id.to_string(), metadata: [("a b".into(), "v".into())].into(), ..Default::default() };
    assert_eq!(code(files.update_file(update(bad_metadata, &["metadata"])).await), Code::InvalidArgument);
    assert_eq!(service.footprint().await, before);

    // Only masked fields change.
    let renamed = files.update_file(update(with("final.txt", &docs.id), &["name"])).await.unwrap().into_inner();
    let renamed = renamed.file.unwrap();
    assert_eq!((renamed.name.as_str(), renamed.folder_id.as_str()), ("final.txt", ""));
    assert!(renamed.metadata.is_empty());
    // Names repeat at the root, not in a folder.
    files.update_file(update(with("root-twin.txt", ""), &["name"])).await.unwrap();
    let status = files.update_file(update(with("taken.txt", &docs.id), &["name", "folder_id"])).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let moved =
        files.update_file(update(with("notes.txt", &docs.id), &["name", "folder_id", "metadata"])).await.unwrap();
    let moved = moved.into_inner().file.unwrap();
    assert_eq!((moved.name.as_str(), moved.folder_id.as_str()), ("notes.txt", docs.id.as_str()));
    assert_eq!(moved.metadata.get("scene").map(String::as_str), Some("1"));
    let back = files.update_file(update(with("", ""), &["folder_id"])).await.unwrap().into_inner().file.unwrap();
    assert_eq!((back.name.as_str(), back.folder_id.as_str()), ("notes.txt", ""));

    // Another owner's folder: unseen by Alice, refused for an admin.
    let bob = Principal::user(alice.tenant);
    let bobs = mkdir(&service, &bob, "", "Bob").await;
    assert_eq!(code(files.update_file(update(with("", &bobs.id), &["folder_id"])).await), Code::NotFound);
    let admin = Principal::tenant_admin(alice.tenant);
    let status = service.files(&admin).update_file(update(with("", &bobs.id), &["folder_id"])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let by_admin = service.files(&admin).update_file(update(with("by-admin.txt", ""), &["name"])).await.unwrap();
    assert_eq!(by_admin.into_inner().file.unwrap().name, "by-admin.txt");
    // Nobody outside reaches it.
    for stranger in [bob, Principal::user(Uuid::new_v4()), Principal::tenant_admin(Uuid::new_v4())] {
        let status = service.files(&stranger).update_file(update(with("mine.txt", ""), &["name"])).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{stranger:?}");
    }
}

#[tokio::test]
async fn copies_are_charged_named_and_idempotent() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let docs = mkdir(&service, &alice, "", "Docs").await;
    let data = bytes(1, 3000);
    let source = seed(&service, &alice, &docs.id, "clip.mp4", &data).await;
    let mut files = service.files(&alice);
    let copy = |name: &str, folder: &str, key: &str| pb::CopyFileRequest {
        file_id: source.to_string(),
        folder_id: folder.into(),
        name: name.into(),
        idempotency_key: key.into(),
        ..Default::default()
    };

    let first = files.copy_file(copy("", &docs.id, "")).await.unwrap().into_inner().file.unwrap();
    assert_eq!((first.name.as_str(), first.folder_id.as_str()), ("clip.mp4 (copy 1)", docs.id.as_str()));
    assert_eq!((first.size_bytes, first.sha256.as_str()), (3000, sha256_hex(&data).as_str()));
    assert_eq!((first.kind, first.owner_user_id.clone()), (pb::FileKind::Asset as i32, alice.user.to_string()));
    assert_ne!(first.id, source.to_string());
    let second = files.copy_file(copy("", &docs.id, "")).await.unwrap().into_inner().file.unwrap();
    assert_eq!(second.name, "clip.mp4 (copy 2)");
    let at_root = files.copy_file(copy("", "", "")).await.unwrap().into_inner().file.unwrap();
    assert_eq!((at_root.name.as_str(), at_root.folder_id.as_str()), ("clip.mp4", ""));
    let kind = pb::CopyFileRequest { kind: pb::FileKind::Export as i32, ..copy("final.mp4", "", "") };
    assert_eq!(files.copy_file(kind).await.unwrap().into_inner().file.unwrap().kind, pb::FileKind::Export as i32);
    let copied = download(&mut files, range(&second.id.parse().unwrap(), 0, 0)).await.unwrap();
    assert_eq!(copied.data, data);

    let footprint = service.footprint().await;
    assert_eq!(footprint.objects.len(), 5);
    let user_quota = footprint.quotas.iter().find(|q| q.1 == Some(alice.user)).unwrap();
    assert_eq!((user_quota.2, user_quota.4), (5 * 3000, 5));
    let events = uploaded_events(&service).await;
    assert_eq!(events.len(), 4);
    assert_eq!((events[0].file_id.as_str(), events[0].size_bytes), (first.id.as_str(), 3000));
    assert_eq!((events[0].name.as_str(), events[0].kind.as_str()), ("clip.mp4 (copy 1)", "asset"));
    assert!(events[0].counts_toward_quota);

    // Failures leave nothing behind.
    let other_tenants = seed(&service, &Principal::user(Uuid::new_v4()), "", "far.mp4", b"far").await;
    let bob = Principal::user(alice.tenant);
    let bobs = mkdir(&service, &bob, "", "Bob").await;
    let bobs_source = seed(&service, &bob, "", "b.mp4", b"bob").await;
    let before = service.footprint().await;
    assert_eq!(code(files.copy_file(copy("clip.mp4", &docs.id, "")).await), Code::AlreadyExists);
    for bad in ["..", "a/b", "a\\b", "nul\u{0}", "trailing "] {
        let status = files.copy_file(copy(bad, "", "")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(status.message().starts_with("name: "), "{}", status.message());
    }
    let foreign = pb::CopyFileRequest { file_id: other_tenants.to_string(), ..Default::default() };
    assert_eq!(code(files.copy_file(foreign).await), Code::NotFound);
    assert_eq!(code(files.copy_file(copy("", &bobs.id, "")).await), Code::NotFound);
    let for_bob = pb::CopyFileRequest { owner_user_id: bob.user.to_string(), ..copy("", "", "") };
    assert_eq!(code(files.copy_file(for_bob).await), Code::PermissionDenied);
    set_quota(&service, alice.user, 5 * 3000 + 2999).await;
    let status = files.copy_file(copy("", "", "")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(service.events("flatrender.events.v1.QuotaExceeded").await.len(), 1);
    assert_eq!(service.footprint().await, before);

    // One key, one copy; the same key for something else is refused.
    set_quota(&service, alice.user, 1 << 30).await;
    let keyed = files.copy_file(copy("keyed.mp4", "", "copy-1")).await.unwrap().into_inner().file.unwrap();
    let before = service.footprint().await;
    let again = files.copy_file(copy("keyed.mp4", "", "copy-1")).await.unwrap().into_inner().file.unwrap();
    assert_eq!(again.id, keyed.id);
    let status = files.copy_file(copy("different.mp4", "", "copy-1")).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let bobs_copy = pb::CopyFileRequest {
        file_id: bobs_source.to_string(),
        idempotency_key: "copy-1".into(),
        ..Default::default()
    };
    assert_eq!(code(service.files(&bob).copy_file(bobs_copy).await), Code::AlreadyExists);
    assert_eq!(service.footprint().await, before);
    // A retry still finds its copy once the source is gone.
    files.delete_file(pb::DeleteFileRequest { file_id: source.to_string() }).await.unwrap();
    let retried = files.copy_file(copy("keyed.mp4", "", "copy-1")).await.unwrap().into_inner().file.unwrap();
    assert_eq!(retried.id, keyed.id);
    assert_eq!(code(files.copy_file(copy("", "", "copy-2")).await), Code::NotFound);
    assert_eq!(uploaded_events(&service).await.len(), 5);
}

#[tokio::test]
async fn a_copy_over_quota_is_refused_before_its_object_is_copied() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let source = seed(&service, &alice, "", "clip.mp4", &bytes(5, 3000)).await;
    set_quota(&service, alice.user, 3000 + 2999).await;
    // Without the source's object a copy that reached storage would fail there (NOT_FOUND), so
    // a quota refusal proves that no copy was attempted.
    service.storage.delete(&ObjectKey::file(alice.tenant, source)).await.unwrap();
    let before = service.footprint().await;
    let mut files = service.files(&alice);
    let request = pb::CopyFileRequest { file_id: source.to_string(), ..Default::default() };

    let (code, message) = failure(files.copy_file(request.clone()).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert_eq!(message, "quota exceeded: 2999 bytes free in the user's quota, 3000 needed");
    assert_eq!(service.events("flatrender.events.v1.QuotaExceeded").await.len(), 1);
    assert_eq!(service.footprint().await, before);
    // With room, the same copy does reach storage.
    set_quota(&service, alice.user, 1 << 30).await;
    let (code, message) = failure(files.copy_file(request).await);
    assert_eq!((code, message.as_str()), (Code::NotFound, "object not found"));
    assert_eq!(service.footprint().await, before);
}

#[tokio::test]
async fn parallel_copies_never_pass_the_quota() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let source = seed(&service, &alice, "", "clip.mp4", &bytes(6, 1000)).await;
    // Room for three copies: copies that all pass the early check are still charged one by one.
    set_quota(&service, alice.user, 4 * 1000 + 999).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut files = service.files(&alice);
        let request = pb::CopyFileRequest { file_id: source.to_string(), ..Default::default() };
        tasks.push(tokio::spawn(async move { files.copy_file(request).await }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap().map(|_| Code::Ok).unwrap_or_else(|status| status.code()));
    }
    assert_eq!(codes.iter().filter(|code| **code == Code::Ok).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|code| **code == Code::ResourceExhausted).count(), 5, "{codes:?}");
    let footprint = service.footprint().await;
    assert_eq!(footprint.objects.len(), 4, "the refused copies' objects are removed");
    assert_eq!(service.quota_usage(alice.tenant, Some(alice.user)).await, (4000, 0, 4));
}

#[tokio::test]
async fn deletion_removes_object_row_and_usage_unless_protected() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let before = service.footprint().await;
    let id = seed(&service, &alice, "", "gone.bin", &[9; 1234]).await;
    let mut files = service.files(&alice);
    let delete = |id: Uuid| pb::DeleteFileRequest { file_id: id.to_string() };
    for stranger in
        [Principal::user(alice.tenant), Principal::user(Uuid::new_v4()), Principal::tenant_admin(Uuid::new_v4())]
    {
        assert_eq!(code(service.files(&stranger).delete_file(delete(id)).await), Code::NotFound, "{stranger:?}");
    }
    files.delete_file(delete(id)).await.unwrap();
    let after = service.footprint().await;
    assert!(after.objects.is_empty());
    assert_eq!(after.rows, before.rows);
    assert!(after.quotas.iter().all(|q| (q.2, q.3, q.4) == (0, 0, 0)), "{:?}", after.quotas);
    assert_eq!(code(files.delete_file(delete(id)).await), Code::NotFound);
    assert_eq!(code(get(&mut files, &id).await), Code::NotFound);
    let events = deleted_events(&service).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].file_id.clone(), events[0].size_bytes), (id.to_string(), 1234));
    assert_eq!(
        (events[0].reason, events[0].deleted_by_user_id.clone()),
        (ev::FileDeletionReason::User as i32, alice.user.to_string())
    );

    // Pinned or retained: only the retaining service deletes it.
    let pinned = seed(&service, &alice, "", "pinned.bin", b"p").await;
    protect(&service, pinned, "pinned = true, retained_by = 'render'").await;
    let retained = seed(&service, &alice, "", "retained.bin", b"r").await;
    protect(&service, retained, "retained_until = now() + interval '1 hour', retained_by = 'studio'").await;
    let expired = seed(&service, &alice, "", "expired.bin", b"e").await;
    protect(&service, expired, "retained_until = now() - interval '1 hour', retained_by = 'studio'").await;
    let protected = service.footprint().await;
    let admin = Principal::tenant_admin(alice.tenant);
    for who in [alice, admin, Principal::service(ServiceName::Studio)] {
        let status = service.files(&who).delete_file(delete(pinned)).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{who:?}");
    }
    for who in [alice, admin, Principal::service(ServiceName::Render)] {
        let status = service.files(&who).delete_file(delete(retained)).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{who:?}");
    }
    assert_eq!(service.footprint().await, protected);
    files.delete_file(delete(expired)).await.unwrap();
    service.files(&Principal::service(ServiceName::Render)).delete_file(delete(pinned)).await.unwrap();
    service.files(&Principal::service(ServiceName::Studio)).delete_file(delete(retained)).await.unwrap();
    let events = deleted_events(&service).await;
    let by_service: Vec<(i32, &str)> = events[2..].iter().map(|e| (e.reason, e.deleted_by_user_id.as_str())).collect();
    assert_eq!(by_service, [(ev::FileDeletionReason::System as i32, ""); 2]);
    assert!(service.footprint().await.objects.is_empty());
}

#[tokio::test]
async fn a_deletion_left_halfway_is_finished_by_the_next_call() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let id = seed(&service, &alice, "", "half.bin", b"half").await;
    protect(&service, id, "state = 'deleting'").await;
    let mut files = service.files(&alice);
    assert_eq!(get(&mut files, &id).await.unwrap().state, pb::FileState::Deleting as i32);
    assert_eq!(code(download(&mut files, range(&id, 0, 0)).await), Code::FailedPrecondition);
    let listed = files.list_files(pb::ListFilesRequest { recursive: true, ..Default::default() }).await.unwrap();
    assert!(listed.into_inner().files.is_empty(), "a file being deleted is not listed");
    files.delete_file(pb::DeleteFileRequest { file_id: id.to_string() }).await.unwrap();
    let footprint = service.footprint().await;
    assert!(footprint.objects.is_empty());
    assert_eq!(service.rows("files").await, 0);
}

#[tokio::test]
async fn retention_is_set_by_services_and_admins_and_released_by_its_setter() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let id = seed(&service, &alice, "", "keep.mp4", b"keep").await;
    let retain = |pinned: bool, until: Option<i64>| pb::SetFileRetentionRequest {
        file_id: id.to_string(),
        pinned,
        retained_until: until.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
    };
    let tomorrow = time::OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    let status = service.files(&alice).set_file_retention(retain(true, None)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    for stranger in [Principal::tenant_admin(Uuid::new_v4())] {
        assert_eq!(code(service.files(&stranger).set_file_retention(retain(true, None)).await), Code::NotFound);
    }

    let render = Principal::service(ServiceName::Render);
    let file = service.files(&render).set_file_retention(retain(false, Some(tomorrow))).await.unwrap();
    let file = file.into_inner().file.unwrap();
    assert_eq!((file.pinned, file.retained_by), (false, pb::ServiceName::Render as i32));
    assert_eq!(file.retained_until.unwrap().seconds, tomorrow);
    // Others may add protection, not take away render's.
    let admin = Principal::tenant_admin(alice.tenant);
    let status = service.files(&admin).set_file_retention(retain(false, None)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let studio = Principal::service(ServiceName::Studio);
    let status = service.files(&studio).set_file_retention(retain(true, Some(tomorrow - 60))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "a shorter retention releases some");
    let got = get(&mut service.files(&alice), &id).await.unwrap();
    assert_eq!((got.pinned, got.retained_until.unwrap().seconds), (false, tomorrow));
    let status =
        service.files(&alice).delete_file(pb::DeleteFileRequest { file_id: id.to_string() }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // The admin pins on top, and the protection is theirs ("file") from then on.
    let pinned = service.files(&admin).set_file_retention(retain(true, Some(tomorrow))).await.unwrap();
    assert_eq!(pinned.into_inner().file.unwrap().retained_by, pb::ServiceName::File as i32);
    let status = service.files(&render).set_file_retention(retain(false, None)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let released = service.files(&Principal::platform_admin()).set_file_retention(retain(false, None)).await.unwrap();
    let released = released.into_inner().file.unwrap();
    assert_eq!((released.pinned, released.retained_until, released.retained_by), (false, None, 0));
    service.files(&alice).delete_file(pb::DeleteFileRequest { file_id: id.to_string() }).await.unwrap();
}

#[tokio::test]
async fn downloads_stream_ranges_in_chunks_of_at_most_a_mebibyte() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let data = bytes(7, 3 * 1024 * 1024 + 12_345);
    let id = seed_kind(&service, &alice, "", "big.mp4", "export", &data).await;
    let mut files = service.files(&alice);

    let whole = download(&mut files, range(&id, 0, 0)).await.unwrap();
    assert_eq!(sha256_hex(&whole.data), sha256_hex(&data));
    assert_eq!((whole.metadata.offset, whole.metadata.length), (0, data.len() as u64));
    assert_eq!(whole.metadata.file.unwrap().id, id.to_string());
    assert!(whole.chunks.len() >= 4 && whole.chunks.iter().all(|&n| (1..=1 << 20).contains(&n)), "{:?}", whole.chunks);

    let size = data.len() as u64;
    for (offset, length, expected) in [
        (10, 100, &data[10..110]),
        (2_000_000, 0, &data[2_000_000..]),
        (size - 5, 1000, &data[data.len() - 5..]),
        (size, 0, &data[..0]),
        (size, 10, &data[..0]),
    ] {
        let part = download(&mut files, range(&id, offset, length)).await.unwrap();
        assert_eq!((part.metadata.offset, part.metadata.length), (offset, expected.len() as u64));
        assert!(part.data == expected, "{offset}+{length}");
    }
    let status = download(&mut files, range(&id, size + 1, 0)).await.err().unwrap();
    assert_eq!(status.code(), Code::OutOfRange);

    let guarded = pb::DownloadFileRequest { expected_sha256: sha256_hex(b"other"), ..range(&id, 0, 10) };
    assert_eq!(code(download(&mut files, guarded).await), Code::FailedPrecondition);
    let guarded = pb::DownloadFileRequest { expected_sha256: sha256_hex(&data), ..range(&id, 5, 10) };
    assert_eq!(download(&mut files, guarded).await.unwrap().data, &data[5..15]);
    let bad_guard = pb::DownloadFileRequest { expected_sha256: "xyz".into(), ..range(&id, 0, 0) };
    assert_eq!(code(download(&mut files, bad_guard).await), Code::InvalidArgument);

    // One event per download by a person, none for services; the last access is noted.
    let events = downloaded_events(&service).await;
    let sent: Vec<(u64, bool)> = events.iter().map(|e| (e.bytes_sent, e.complete)).collect();
    assert_eq!(
        sent,
        [(size, true), (100, false), (size - 2_000_000, false), (5, false), (0, false), (0, false), (10, false)]
    );
    assert!(events.iter().all(|e| e.downloaded_by_user_id == alice.user.to_string() && e.kind == "export"));
    let render = Principal::service(ServiceName::Render);
    assert_eq!(download(&mut service.files(&render), range(&id, 0, 0)).await.unwrap().data.len(), data.len());
    assert_eq!(downloaded_events(&service).await.len(), 7);
    let accessed = get(&mut files, &id).await.unwrap().last_accessed_at.unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - 60..=now).contains(&accessed.seconds));

    for stranger in [Principal::user(alice.tenant), Principal::tenant_admin(Uuid::new_v4())] {
        assert_eq!(code(download(&mut service.files(&stranger), range(&id, 0, 0)).await), Code::NotFound);
    }
    let admin = Principal::tenant_admin(alice.tenant);
    assert_eq!(download(&mut service.files(&admin), range(&id, 0, 3)).await.unwrap().data, &data[..3]);
}

#[tokio::test]
async fn an_empty_file_downloads_as_metadata_alone() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let id = seed(&service, &alice, "", "empty.txt", b"").await;
    let mut files = service.files(&alice);
    let empty = download(&mut files, range(&id, 0, 0)).await.unwrap();
    assert_eq!((empty.metadata.length, empty.chunks.len()), (0, 0));
    assert_eq!(code(download(&mut files, range(&id, 1, 0)).await), Code::OutOfRange);
    let events = downloaded_events(&service).await;
    assert_eq!(events.iter().map(|e| (e.bytes_sent, e.complete)).collect::<Vec<_>>(), [(0, true)]);
}

#[tokio::test]
async fn services_reach_files_of_any_tenant() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let id = seed(&service, &alice, "", "a.png", b"a").await;
    let mut render = service.files(&Principal::service(ServiceName::Render));
    assert_eq!(get(&mut render, &id).await.unwrap().owner_user_id, alice.user.to_string());
    // A service's copy goes to the source's owner unless it names one, and records the service.
    let copy = pb::CopyFileRequest { file_id: id.to_string(), name: "by-render.png".into(), ..Default::default() };
    let copy = render.copy_file(copy).await.unwrap().into_inner().file.unwrap();
    assert_eq!(
        (copy.owner_user_id.clone(), copy.source_service),
        (alice.user.to_string(), pb::ServiceName::Render as i32)
    );
    let bob = Uuid::new_v4();
    let for_bob = pb::CopyFileRequest { file_id: id.to_string(), owner_user_id: bob.to_string(), ..Default::default() };
    assert_eq!(render.copy_file(for_bob).await.unwrap().into_inner().file.unwrap().owner_user_id, bob.to_string());
    let rename = pb::File { id: copy.id.clone(), name: "renamed.png".into(), ..Default::default() };
    let request = pb::UpdateFileRequest { file: Some(rename), update_mask: mask(&["name"]) };
    assert_eq!(render.update_file(request).await.unwrap().into_inner().file.unwrap().name, "renamed.png");
}

#[tokio::test]
async fn s3_downloads_and_copies() {
    let service = Service::start_with(Backend::S3, |_| {}).await;
    let alice = Principal::user(Uuid::new_v4());
    let data = bytes(3, 2 * 1024 * 1024 + 7);
    let id = seed(&service, &alice, "", "remote.bin", &data).await;
    let mut files = service.files(&alice);
    let whole = download(&mut files, range(&id, 0, 0)).await.unwrap();
    assert_eq!(sha256_hex(&whole.data), sha256_hex(&data));
    assert!(whole.chunks.iter().all(|&n| (1..=1 << 20).contains(&n)), "{:?}", whole.chunks);
    let part = download(&mut files, range(&id, 1_048_570, 20)).await.unwrap();
    assert_eq!(part.data, &data[1_048_570..1_048_590]);
    assert_eq!(code(download(&mut files, range(&id, data.len() as u64 + 1, 0)).await), Code::OutOfRange);

    let copy = pb::CopyFileRequest { file_id: id.to_string(), ..Default::default() };
    let copy = files.copy_file(copy).await.unwrap().into_inner().file.unwrap();
    assert_eq!(copy.name, "remote.bin (copy 1)");
    let copied = download(&mut files, range(&copy.id.parse().unwrap(), 0, 0)).await.unwrap();
    assert_eq!(sha256_hex(&copied.data), sha256_hex(&data));
    assert_eq!(service.footprint().await.objects.len(), 2);
    let backend: String = sqlx::query_scalar("SELECT storage_backend FROM file_mgr.files WHERE id = $1")
        .bind(copy.id.parse::<Uuid>().unwrap())
        .fetch_one(service.db.pool())
        .await
        .unwrap();
    assert_eq!(backend, "s3");

    // Over quota: the copied object is removed again.
    let before = service.footprint().await;
    set_quota(&service, alice.user, 2 * data.len() as i64).await;
    let again = pb::CopyFileRequest { file_id: id.to_string(), ..Default::default() };
    assert_eq!(code(files.copy_file(again).await), Code::ResourceExhausted);
    assert_eq!(service.footprint().await, before);
    files.delete_file(pb::DeleteFileRequest { file_id: copy.id.clone() }).await.unwrap();
    assert_eq!(service.footprint().await.objects.len(), 1);
}

#[tokio::test]
async fn the_last_access_is_noted_at_most_once_an_hour() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let id = seed(&service, &alice, "", "seen.txt", b"seen").await;
    let accessed = || async {
        sqlx::query_scalar::<_, Option<time::OffsetDateTime>>(
            "SELECT last_accessed_at FROM file_mgr.files WHERE id = $1",
        )
        .bind(id)
        .fetch_one(service.db.pool())
        .await
        .unwrap()
    };
    assert_eq!(accessed().await, None);
    let mut files = service.files(&alice);
    download(&mut files, range(&id, 0, 0)).await.unwrap();
    let first = accessed().await.unwrap();
    protect(&service, id, "last_accessed_at = last_accessed_at - interval '59 minutes'").await;
    let earlier = accessed().await.unwrap();
    download(&mut files, range(&id, 0, 0)).await.unwrap();
    assert_eq!(accessed().await, Some(earlier), "within the hour");
    protect(&service, id, "last_accessed_at = last_accessed_at - interval '2 minutes'").await;
    download(&mut files, range(&id, 0, 0)).await.unwrap();
    assert!(accessed().await.unwrap() >= first, "more than an hour later");
    assert_eq!(downloaded_events(&service).await.len(), 3);
}
