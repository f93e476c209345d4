//! FolderService over the real service: trees, paths, moves, listings, deletion and access.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod moto;
mod support;

use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::common::v1::PageRequest;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::file::v1 as pb;
use prost_types::FieldMask;
use support::{Folders, Principal, Seed, Service, code};
use tonic::Code;
use uuid::Uuid;

/// Creates folder `name` under `parent` ("" for the root) as the client's caller.
async fn mkdir(folders: &mut Folders, parent: &str, name: &str) -> pb::Folder {
    let request = pb::CreateFolderRequest { parent_id: parent.into(), name: name.into(), ..Default::default() };
    folders.create_folder(request).await.unwrap().into_inner().folder.unwrap()
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

/// Seeds a counted file of `owner` into `folder`.
async fn seed(service: &Service, who: &Principal, folder: &str, name: &str, data: &[u8]) -> Uuid {
    let folder = if folder.is_empty() { None } else { Some(folder.parse().unwrap()) };
    let seed = Seed { tenant: who.tenant, owner: Some(who.user), folder, name, kind: "asset", data, counted: true };
    service.seed_file(seed).await
}

async fn get(folders: &mut Folders, id: &str) -> Result<pb::GetFolderResponse, tonic::Status> {
    folders.get_folder(pb::GetFolderRequest { folder_id: id.into() }).await.map(tonic::Response::into_inner)
}

async fn move_folder(folders: &mut Folders, id: &str, parent: &str) -> Result<pb::Folder, tonic::Status> {
    let folder = pb::Folder { id: id.into(), parent_id: parent.into(), ..Default::default() };
    let request = pb::UpdateFolderRequest { folder: Some(folder), update_mask: mask(&["parent_id"]) };
    folders.update_folder(request).await.map(|r| r.into_inner().folder.unwrap())
}

fn deleted_events(payloads: Vec<Vec<u8>>) -> Vec<ev::FileDeleted> {
    payloads
        .into_iter()
        .map(|value| {
            let any = prost_types::Any { type_url: "/flatrender.events.v1.FileDeleted".into(), value };
            any.to_msg::<ev::FileDeleted>().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn folders_have_paths_ancestors_and_counts() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let mut folders = service.folders(&alice);
    let projects = mkdir(&mut folders, "", "Projects").await;
    assert_eq!((projects.path.as_str(), projects.parent_id.as_str()), ("/Projects", ""));
    assert_eq!(projects.owner_user_id, alice.user.to_string());
    assert_eq!(projects.tenant_id, alice.tenant.to_string());
    let year = mkdir(&mut folders, &projects.id, "2026").await;
    let june = mkdir(&mut folders, &year.id, "June").await;
    assert_eq!(june.path, "/Projects/2026/June");
    mkdir(&mut folders, &year.id, "July").await;
    seed(&service, &alice, &year.id, "a.png", b"aaaa").await;
    seed(&service, &alice, &year.id, "b.png", b"bb").await;

    let got = get(&mut folders, &year.id).await.unwrap();
    let folder = got.folder.unwrap();
    assert_eq!((folder.name.as_str(), folder.path.as_str()), ("2026", "/Projects/2026"));
    assert_eq!((got.file_count, got.folder_count), (2, 2));
    let deep = get(&mut folders, &june.id).await.unwrap();
    let ancestors: Vec<(&str, &str)> = deep.ancestors.iter().map(|f| (f.name.as_str(), f.path.as_str())).collect();
    assert_eq!(ancestors, [("Projects", "/Projects"), ("2026", "/Projects/2026")]);
    assert_eq!((deep.file_count, deep.folder_count), (0, 0));
    assert_eq!(code(get(&mut folders, &Uuid::new_v4().to_string()).await), Code::NotFound);
    assert_eq!(code(get(&mut folders, "not-a-uuid").await), Code::InvalidArgument);
}

#[tokio::test]
async fn bad_names_and_clashes_leave_nothing_behind() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let mut folders = service.folders(&alice);
    let top = mkdir(&mut folders, "", "Top").await;
    let before = service.footprint().await;
    for bad in ["", "..", "a..b", "a/b", "a\\b", "a\u{7}b", "tab\tname", " lead", "trail ", &"x".repeat(256)] {
        let request = pb::CreateFolderRequest { parent_id: top.id.clone(), name: bad.into(), ..Default::default() };
        let status = folders.create_folder(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(status.message().starts_with("name: "), "{bad:?}: {}", status.message());
        let folder = pb::Folder { id: top.id.clone(), name: bad.into(), ..Default::default() };
        let rename = pb::UpdateFolderRequest { folder: Some(folder), update_mask: mask(&["name"]) };
        assert_eq!(code(folders.update_folder(rename).await), Code::InvalidArgument, "{bad:?}");
    }
    assert_eq!(service.footprint().await, before);

    let request = pb::CreateFolderRequest { name: "Top".into(), ..Default::default() };
    assert_eq!(code(folders.create_folder(request).await), Code::AlreadyExists);
    mkdir(&mut folders, &top.id, "Inner").await;
    let clash = pb::CreateFolderRequest { parent_id: top.id.clone(), name: "Inner".into(), ..Default::default() };
    assert_eq!(code(folders.create_folder(clash).await), Code::AlreadyExists);
    // Another user's root, and another parent, may hold the same names.
    let bob = Principal::user(alice.tenant);
    mkdir(&mut service.folders(&bob), "", "Top").await;
    let inner = mkdir(&mut folders, "", "Inner").await;
    assert_eq!(inner.path, "/Inner");
    let unknown_parent =
        pb::CreateFolderRequest { parent_id: Uuid::new_v4().to_string(), name: "x".into(), ..Default::default() };
    assert_eq!(code(folders.create_folder(unknown_parent).await), Code::NotFound);
    assert_eq!(service.rows("folders").await, 4);
}

#[tokio::test]
async fn folders_nest_at_most_32_deep() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let mut folders = service.folders(&alice);
    let mut parent = String::new();
    let mut chain = Vec::new();
    for level in 1..=32 {
        let folder = mkdir(&mut folders, &parent, &format!("L{level}")).await;
        parent = folder.id.clone();
        chain.push(folder);
    }
    assert_eq!(chain[31].path.matches('/').count(), 32);
    let request = pb::CreateFolderRequest { parent_id: parent.clone(), name: "L33".into(), ..Default::default() };
    let status = folders.create_folder(request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // A two-level subtree fits under level 30, not under level 31.
    let a = mkdir(&mut folders, "", "A").await;
    mkdir(&mut folders, &a.id, "B").await;
    assert_eq!(code(move_folder(&mut folders, &a.id, &chain[30].id).await), Code::FailedPrecondition);
    let moved = move_folder(&mut folders, &a.id, &chain[29].id).await.unwrap();
    assert_eq!(moved.path.matches('/').count(), 31);
    assert_eq!(service.rows("folders").await, 34);
}

#[tokio::test]
async fn moves_and_renames_refuse_cycles_and_clashes() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let mut folders = service.folders(&alice);
    let a = mkdir(&mut folders, "", "A").await;
    let b = mkdir(&mut folders, &a.id, "B").await;
    let c = mkdir(&mut folders, &b.id, "C").await;
    let other = mkdir(&mut folders, "", "Other").await;

    for target in [&a.id, &b.id, &c.id] {
        let status = move_folder(&mut folders, &a.id, target).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "parent_id: would create a cycle");
    }
    assert_eq!(code(move_folder(&mut folders, &b.id, &c.id).await), Code::InvalidArgument);

    let moved = move_folder(&mut folders, &b.id, &other.id).await.unwrap();
    assert_eq!(moved.path, "/Other/B");
    assert_eq!(get(&mut folders, &c.id).await.unwrap().folder.unwrap().path, "/Other/B/C");
    // Now A is no ancestor of C: A may move under it.
    assert_eq!(move_folder(&mut folders, &a.id, &c.id).await.unwrap().path, "/Other/B/C/A");
    assert_eq!(move_folder(&mut folders, &a.id, "").await.unwrap().path, "/A");

    let both = pb::Folder { id: b.id.clone(), name: "Renamed".into(), parent_id: a.id.clone(), ..Default::default() };
    let request = pb::UpdateFolderRequest { folder: Some(both), update_mask: mask(&["name", "parent_id"]) };
    let renamed = folders.update_folder(request).await.unwrap().into_inner().folder.unwrap();
    assert_eq!((renamed.name.as_str(), renamed.path.as_str()), ("Renamed", "/A/Renamed"));

    // A clash on rename and on move.
    let to_other = pb::Folder { id: a.id.clone(), name: "Other".into(), ..Default::default() };
    let request = pb::UpdateFolderRequest { folder: Some(to_other), update_mask: mask(&["name"]) };
    assert_eq!(code(folders.update_folder(request).await), Code::AlreadyExists);
    mkdir(&mut folders, &other.id, "Renamed").await;
    assert_eq!(code(move_folder(&mut folders, &b.id, &other.id).await), Code::AlreadyExists);

    let folder = pb::Folder { id: a.id.clone(), name: "X".into(), ..Default::default() };
    for paths in [&[][..], &["tenant_id"][..], &["name", "path"][..]] {
        let request = pb::UpdateFolderRequest { folder: Some(folder.clone()), update_mask: mask(paths) };
        let status = folders.update_folder(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{paths:?}");
        assert!(status.message().starts_with("update_mask: "), "{}", status.message());
    }
    // Only the mask's fields are read: the name is ignored here.
    let request = pb::UpdateFolderRequest { folder: Some(folder), update_mask: mask(&["parent_id"]) };
    assert_eq!(folders.update_folder(request).await.unwrap().into_inner().folder.unwrap().path, "/A");

    // Another owner's folder is no parent for Alice's.
    let bob = Principal::user(alice.tenant);
    let bobs = mkdir(&mut service.folders(&bob), "", "Bob").await;
    assert_eq!(code(move_folder(&mut folders, &a.id, &bobs.id).await), Code::NotFound);
    let admin = Principal::tenant_admin(alice.tenant);
    let status = move_folder(&mut service.folders(&admin), &a.id, &bobs.id).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// Every page of a listing, page by page.
async fn all_pages(folders: &mut Folders, mut request: pb::ListFoldersRequest, size: u32) -> Vec<Vec<pb::Folder>> {
    let mut pages = Vec::new();
    loop {
        request.page = Some(PageRequest { page_size: size, page_token: request.page.unwrap_or_default().page_token });
        let response = folders.list_folders(request.clone()).await.unwrap().into_inner();
        pages.push(response.folders);
        let token = response.page.unwrap().next_page_token;
        if token.is_empty() {
            return pages;
        }
        request.page = Some(PageRequest { page_size: size, page_token: token });
    }
}

fn paths(pages: &[Vec<pb::Folder>]) -> Vec<String> {
    pages.iter().flatten().map(|f| f.path.clone()).collect()
}

#[tokio::test]
async fn listings_page_by_name_and_depth_first() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let mut folders = service.folders(&alice);
    let b = mkdir(&mut folders, "", "b").await;
    let a = mkdir(&mut folders, "", "a").await;
    mkdir(&mut folders, "", "c").await;
    mkdir(&mut folders, "", "Clips").await;
    let a2 = mkdir(&mut folders, &a.id, "a2").await;
    mkdir(&mut folders, &a.id, "a1").await;
    mkdir(&mut folders, &a2.id, "deep").await;
    mkdir(&mut folders, &b.id, "b1").await;
    mkdir(&mut service.folders(&Principal::user(alice.tenant)), "", "someone else's").await;

    let roots = all_pages(&mut folders, pb::ListFoldersRequest::default(), 3).await;
    assert_eq!(roots.iter().map(Vec::len).collect::<Vec<_>>(), [3, 1]);
    let listed = paths(&roots);
    assert!(listed.contains(&"/Clips".to_owned()), "{listed:?}");
    // Where "Clips" sorts depends on the database's collation; the others are plain.
    let lower_case: Vec<&String> = listed.iter().filter(|p| *p != "/Clips").collect();
    assert_eq!(lower_case, ["/a", "/b", "/c"], "siblings by name");

    let children = pb::ListFoldersRequest { parent_id: a.id.clone(), ..Default::default() };
    assert_eq!(paths(&all_pages(&mut folders, children, 1).await), ["/a/a1", "/a/a2"]);

    let tree = pb::ListFoldersRequest { recursive: true, ..Default::default() };
    let pages = all_pages(&mut folders, tree, 2).await;
    assert_eq!(pages.len(), 4);
    let depth_first: Vec<String> = paths(&pages).into_iter().filter(|p| !p.starts_with("/Clips")).collect();
    assert_eq!(depth_first, ["/a", "/a/a1", "/a/a2", "/a/a2/deep", "/b", "/b/b1", "/c"]);
    let subtree = pb::ListFoldersRequest { parent_id: a.id.clone(), recursive: true, ..Default::default() };
    assert_eq!(paths(&all_pages(&mut folders, subtree, 2).await), ["/a/a1", "/a/a2", "/a/a2/deep"]);

    let search = pb::ListFoldersRequest { name_query: "C".into(), ..Default::default() };
    let mut found = paths(&all_pages(&mut folders, search, 10).await);
    found.sort();
    assert_eq!(found, ["/Clips", "/c"]);
    let search = pb::ListFoldersRequest { name_query: "a".into(), recursive: true, ..Default::default() };
    assert_eq!(paths(&all_pages(&mut folders, search, 10).await), ["/a", "/a/a1", "/a/a2"]);

    // A token belongs to its listing.
    let first = folders
        .list_folders(pb::ListFoldersRequest {
            page: Some(PageRequest { page_size: 1, ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let token = first.page.unwrap().next_page_token;
    let other = pb::ListFoldersRequest {
        page: Some(PageRequest { page_size: 1, page_token: token }),
        recursive: true,
        ..Default::default()
    };
    assert_eq!(code(folders.list_folders(other).await), Code::InvalidArgument);
    let too_big = pb::ListFoldersRequest {
        page: Some(PageRequest { page_size: 501, ..Default::default() }),
        ..Default::default()
    };
    assert_eq!(code(folders.list_folders(too_big).await), Code::InvalidArgument);
}

#[tokio::test]
async fn only_empty_folders_go_without_recursive() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let mut folders = service.folders(&alice);
    let a = mkdir(&mut folders, "", "A").await;
    let b = mkdir(&mut folders, &a.id, "B").await;
    let file = seed(&service, &alice, &b.id, "f.txt", b"hello").await;
    let delete = |id: &str| pb::DeleteFolderRequest { folder_id: id.into(), recursive: false };
    let before = service.footprint().await;
    assert_eq!(code(folders.delete_folder(delete(&a.id)).await), Code::FailedPrecondition);
    assert_eq!(code(folders.delete_folder(delete(&b.id)).await), Code::FailedPrecondition);
    assert_eq!(service.footprint().await, before);

    let mut files = service.files(&alice);
    files.delete_file(pb::DeleteFileRequest { file_id: file.to_string() }).await.unwrap();
    let removed = folders.delete_folder(delete(&b.id)).await.unwrap().into_inner();
    assert_eq!((removed.files_deleted, removed.folders_deleted, removed.bytes_freed), (0, 1, 0));
    assert_eq!(code(get(&mut folders, &b.id).await), Code::NotFound);
    assert_eq!(code(folders.delete_folder(delete(&b.id)).await), Code::NotFound);
    folders.delete_folder(delete(&a.id)).await.unwrap();
    assert_eq!(service.rows("folders").await, 0);
}

#[tokio::test]
async fn recursive_deletion_removes_objects_rows_and_usage() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let mut folders = service.folders(&alice);
    let keep = mkdir(&mut folders, "", "Keep").await;
    let kept = seed(&service, &alice, &keep.id, "kept.bin", &[7; 10]).await;
    let before = service.footprint().await;
    let a = mkdir(&mut folders, "", "A").await;
    let b = mkdir(&mut folders, &a.id, "B").await;
    let c = mkdir(&mut folders, &b.id, "C").await;
    mkdir(&mut folders, &a.id, "Empty").await;
    let expired = seed(&service, &alice, &a.id, "1.bin", &[1; 100]).await;
    seed(&service, &alice, &b.id, "2.bin", &[2; 200]).await;
    seed(&service, &alice, &c.id, "3.bin", &[3; 300]).await;
    // A retention that has run out protects nothing.
    sqlx::query(
        "UPDATE file_mgr.files SET retained_until = now() - interval '1 minute', retained_by = 'render' WHERE id = $1",
    )
    .bind(expired)
    .execute(service.db.pool())
    .await
    .unwrap();

    let request = pb::DeleteFolderRequest { folder_id: a.id.clone(), recursive: true };
    let removed = folders.delete_folder(request).await.unwrap().into_inner();
    assert_eq!((removed.files_deleted, removed.folders_deleted, removed.bytes_freed), (3, 4, 600));
    assert_eq!(service.footprint().await, before, "objects, rows and quota usage are back where they were");
    assert_eq!(code(get(&mut folders, &c.id).await), Code::NotFound);
    let kept = service.files(&alice).get_file(pb::GetFileRequest { file_id: kept.to_string() }).await.unwrap();
    assert_eq!(kept.into_inner().file.unwrap().folder_id, keep.id);

    let events = deleted_events(service.events("flatrender.events.v1.FileDeleted").await);
    assert_eq!(events.len(), 3);
    for event in &events {
        assert_eq!(event.reason, ev::FileDeletionReason::User as i32);
        assert_eq!(event.deleted_by_user_id, alice.user.to_string());
        assert_eq!(event.owner_user_id, alice.user.to_string());
        assert!(event.counts_toward_quota);
    }
    let mut sizes: Vec<u64> = events.iter().map(|e| e.size_bytes).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [100, 200, 300]);
}

#[tokio::test]
async fn recursive_deletion_deletes_nothing_above_a_protected_file() {
    let service = Service::start().await;
    let alice = Principal::user(Uuid::new_v4());
    let mut folders = service.folders(&alice);
    let a = mkdir(&mut folders, "", "A").await;
    let b = mkdir(&mut folders, &a.id, "B").await;
    seed(&service, &alice, &a.id, "free.bin", &[1; 10]).await;
    let pinned = seed(&service, &alice, &b.id, "pinned.bin", &[2; 10]).await;
    sqlx::query("UPDATE file_mgr.files SET pinned = true, retained_by = 'render' WHERE id = $1")
        .bind(pinned)
        .execute(service.db.pool())
        .await
        .unwrap();
    let before = service.footprint().await;
    let request = pb::DeleteFolderRequest { folder_id: a.id.clone(), recursive: true };
    let status = folders.delete_folder(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(service.footprint().await, before);

    // Retained until a time ahead protects too; admins are held back the same way.
    sqlx::query("UPDATE file_mgr.files SET pinned = false, retained_until = now() + interval '1 day' WHERE id = $1")
        .bind(pinned)
        .execute(service.db.pool())
        .await
        .unwrap();
    let admin = Principal::tenant_admin(alice.tenant);
    assert_eq!(code(service.folders(&admin).delete_folder(request.clone()).await), Code::FailedPrecondition);
    assert_eq!(service.footprint().await, before);
    assert!(service.events("flatrender.events.v1.FileDeleted").await.is_empty());
}

#[tokio::test]
async fn folders_are_reachable_by_their_owner_admins_and_services_only() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let alice = Principal::user(tenant);
    let a = mkdir(&mut service.folders(&alice), "", "A").await;
    let strangers = [Principal::user(Uuid::new_v4()), Principal::user(tenant), Principal::tenant_admin(Uuid::new_v4())];
    let before = service.footprint().await;
    for stranger in &strangers {
        let mut folders = service.folders(stranger);
        assert_eq!(code(get(&mut folders, &a.id).await), Code::NotFound, "{stranger:?}");
        let rename = pb::Folder { id: a.id.clone(), name: "Mine".into(), ..Default::default() };
        let request = pb::UpdateFolderRequest { folder: Some(rename), update_mask: mask(&["name"]) };
        assert_eq!(code(folders.update_folder(request).await), Code::NotFound);
        let delete = pb::DeleteFolderRequest { folder_id: a.id.clone(), recursive: true };
        assert_eq!(code(folders.delete_folder(delete).await), Code::NotFound);
        let list = pb::ListFoldersRequest { parent_id: a.id.clone(), ..Default::default() };
        assert_eq!(code(folders.list_folders(list).await), Code::NotFound);
        let create = pb::CreateFolderRequest { parent_id: a.id.clone(), name: "x".into(), ..Default::default() };
        assert_eq!(code(folders.create_folder(create).await), Code::NotFound);
    }
    assert_eq!(service.footprint().await, before);

    // A user may not act for others.
    let mut folders = service.folders(&alice);
    let for_bob =
        pb::CreateFolderRequest { name: "x".into(), owner_user_id: Uuid::new_v4().to_string(), ..Default::default() };
    assert_eq!(code(folders.create_folder(for_bob).await), Code::PermissionDenied);
    let tenants = pb::ListFoldersRequest { tenant_owned: true, ..Default::default() };
    assert_eq!(code(folders.list_folders(tenants).await), Code::PermissionDenied);

    // A tenant admin reaches Alice's tree and the tenant's own.
    let admin = Principal::tenant_admin(tenant);
    let mut folders = service.folders(&admin);
    assert_eq!(get(&mut folders, &a.id).await.unwrap().folder.unwrap().path, "/A");
    let inside = mkdir(&mut folders, &a.id, "ByAdmin").await;
    assert_eq!(inside.owner_user_id, alice.user.to_string(), "a child joins its parent's tree");
    let listed = pb::ListFoldersRequest { owner_user_id: alice.user.to_string(), ..Default::default() };
    let listed = folders.list_folders(listed).await.unwrap().into_inner().folders;
    assert_eq!(listed.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["/A"]);
    let shared = pb::CreateFolderRequest { name: "Shared".into(), tenant_owned: true, ..Default::default() };
    let shared = folders.create_folder(shared).await.unwrap().into_inner().folder.unwrap();
    assert_eq!((shared.owner_user_id.as_str(), shared.tenant_id.clone()), ("", tenant.to_string()));
    let wrong_tree = pb::CreateFolderRequest {
        parent_id: shared.id.clone(),
        name: "x".into(),
        owner_user_id: alice.user.to_string(),
        ..Default::default()
    };
    assert_eq!(code(folders.create_folder(wrong_tree).await), Code::InvalidArgument);
    let own = pb::ListFoldersRequest { tenant_owned: true, ..Default::default() };
    let own = folders.list_folders(own).await.unwrap().into_inner().folders;
    assert_eq!(own.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["Shared"]);

    // A service names no tenant here: it works from a folder.
    let render = Principal::service(ServiceName::Render);
    let mut folders = service.folders(&render);
    let at_root = pb::CreateFolderRequest { name: "x".into(), ..Default::default() };
    assert_eq!(code(folders.create_folder(at_root).await), Code::InvalidArgument);
    let child = mkdir(&mut folders, &shared.id, "Renders").await;
    assert_eq!((child.path.as_str(), child.owner_user_id.as_str()), ("/Shared/Renders", ""));
    assert_eq!(get(&mut folders, &a.id).await.unwrap().folder.unwrap().owner_user_id, alice.user.to_string());
}
