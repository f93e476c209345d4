//! `ListFiles`: one folder's files (or the owner's root), or everything beneath a folder, with a
//! kind filter, a name search and four sorts, in keyset pages.
//!
//! A page token carries the last file's sort value and id (the tie-breaker); the filters and the
//! sort are in its fingerprint, so a token cannot continue another listing.

use flatrender_proto::flatrender::common::v1::{PageResponse, SortDirection};
use flatrender_proto::flatrender::file::v1 as pb;
use time::OffsetDateTime;
use uuid::Uuid;

use super::super::folders::tree::{self, Lock, Scope, Tree};
use crate::FileApi;
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::model::{FILE_COLUMNS, FileKind, FileRecord};
use crate::{page, validate};

/// What files are sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SortField {
    Name,
    Size,
    CreatedAt,
    UpdatedAt,
}

impl SortField {
    fn from_proto(value: i32) -> Result<Self> {
        let field =
            pb::FileSortField::try_from(value).map_err(|_| FileError::invalid("sort_field", "is not a sort field"))?;
        Ok(match field {
            pb::FileSortField::Unspecified => Self::Name,
            pb::FileSortField::Size => Self::Size,
            pb::FileSortField::CreatedAt => Self::CreatedAt,
            pb::FileSortField::UpdatedAt => Self::UpdatedAt,
        })
    }

    fn column(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Size => "size_bytes",
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "updated_at",
        }
    }

    /// The documented default: names A to Z, the largest and the newest first.
    fn descending_by_default(self) -> bool {
        self != Self::Name
    }

    /// The sort value of `file`, as a page token keeps it.
    fn key(self, file: &FileRecord) -> Key {
        match self {
            Self::Name => Key::Text(file.name.clone()),
            Self::Size => Key::Number(i64::try_from(file.size).unwrap_or(i64::MAX)),
            Self::CreatedAt => Key::Number(micros(file.created_at)),
            Self::UpdatedAt => Key::Number(micros(file.updated_at)),
        }
    }
}

/// A sort value in a page token: a name, a size, or a time in microseconds (PostgreSQL's
/// resolution, so it compares exactly).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Key {
    Text(String),
    Number(i64),
}

fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// Whether the request asks for descending order of `field`.
fn descending(field: SortField, direction: i32) -> Result<bool> {
    let direction =
        SortDirection::try_from(direction).map_err(|_| FileError::invalid("sort_direction", "is not a direction"))?;
    Ok(match direction {
        SortDirection::Unspecified => field.descending_by_default(),
        SortDirection::Ascending => false,
        SortDirection::Descending => true,
    })
}

/// The stored names of the kinds asked for; `None` for every kind (none named, or UNSPECIFIED,
/// which as a filter means any).
fn kinds(values: &[i32]) -> Result<Option<Vec<String>>> {
    let mut names = Vec::with_capacity(values.len());
    for value in values {
        match FileKind::from_proto("kinds", *value)? {
            Some(kind) => names.push(kind.as_str().to_owned()),
            None => return Ok(None),
        }
    }
    names.sort();
    names.dedup();
    Ok(if names.is_empty() { None } else { Some(names) })
}

impl FileApi {
    /// One page of `ListFiles`.
    pub(super) async fn file_page(&self, actor: &Actor, req: &pb::ListFilesRequest) -> Result<pb::ListFilesResponse> {
        let page = req.page.clone().unwrap_or_default();
        let limit = validate::page_size("page.page_size", page.page_size)?;
        let folder = validate::optional_id("folder_id", &req.folder_id)?;
        let kinds = kinds(&req.kinds)?;
        let query = validate::name_query("name_query", &req.name_query)?;
        let field = SortField::from_proto(req.sort_field)?;
        let descending = descending(field, req.sort_direction)?;
        let anchor = match folder {
            Some(id) => Some(tree::reachable(&self.state.pool, actor, id, Lock::None).await?),
            None => None,
        };
        let scope = Scope {
            tenant: Some(("tenant_id", &req.tenant_id)),
            owner: ("owner_user_id", &req.owner_user_id),
            tenant_owned: req.tenant_owned,
            anchor_field: "folder_id",
        };
        let tree = tree::resolve(actor, scope, anchor.as_ref())?;
        let fingerprint =
            page::fingerprint(&[&"files", &tree, &folder, &req.recursive, &kinds, &query, &field, &descending]);
        let after: Option<(Key, Uuid)> = page::decode("page.page_token", &fingerprint, &page.page_token)?;
        let pattern = query.as_ref().map(validate::name_pattern);
        let filter = Filter { tree, folder, recursive: req.recursive, kinds, pattern, field, descending, limit };
        let mut files = self.select_files(&filter, after).await?;
        let next_page_token =
            page::next_token(&mut files, limit, |last| page::encode(&fingerprint, &(field.key(last), last.id)));
        Ok(pb::ListFilesResponse {
            files: files.iter().map(FileRecord::to_proto).collect(),
            page: Some(PageResponse { next_page_token }),
        })
    }

    /// Up to `limit + 1` files matching `filter`, in its order, after `after`.
    async fn select_files(&self, filter: &Filter, after: Option<(Key, Uuid)>) -> Result<Vec<FileRecord>> {
        let column = filter.field.column();
        let (direction, beyond) = if filter.descending { ("DESC", "<") } else { ("ASC", ">") };
        let (folder_clause, cast) = (
            if filter.recursive {
                "($3::uuid IS NULL OR folder_id IN (SELECT id FROM down))"
            } else {
                "folder_id IS NOT DISTINCT FROM $3"
            },
            match filter.field {
                SortField::Name => "text",
                SortField::Size => "bigint",
                SortField::CreatedAt | SortField::UpdatedAt => "timestamptz",
            },
        );
        // Only fixed fragments are composed; every value is a parameter.
        let sql = format!(
            "WITH RECURSIVE down AS (
                 SELECT id, 1 AS depth FROM file_mgr.folders WHERE id = $3
                 UNION ALL
                 SELECT f.id, down.depth + 1 FROM file_mgr.folders f JOIN down ON f.parent_id = down.id
                  WHERE down.depth < 64
             )
             SELECT {FILE_COLUMNS} FROM file_mgr.files
              WHERE tenant_id = $1 AND owner_user_id IS NOT DISTINCT FROM $2 AND state = 'active' AND {folder_clause}
                AND ($4::text[] IS NULL OR kind = ANY($4)) AND ($5::text IS NULL OR lower(name) LIKE $5)
                AND ($7::uuid IS NULL OR ({column}, id) {beyond} ($6::{cast}, $7))
              ORDER BY {column} {direction}, id {direction} LIMIT $8"
        );
        let (key, after_id) = match after {
            Some((key, id)) => (Some(key), Some(id)),
            None => (None, None),
        };
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.tree.tenant)
            .bind(filter.tree.owner)
            .bind(filter.folder)
            .bind(filter.kinds.as_deref())
            .bind(filter.pattern.as_deref());
        let query = match (filter.field, key) {
            (SortField::Name, None) => query.bind(None::<String>),
            (SortField::Name, Some(Key::Text(name))) => query.bind(Some(name)),
            (SortField::Size, None) => query.bind(None::<i64>),
            (SortField::Size, Some(Key::Number(size))) => query.bind(Some(size)),
            (SortField::CreatedAt | SortField::UpdatedAt, None) => query.bind(None::<OffsetDateTime>),
            (SortField::CreatedAt | SortField::UpdatedAt, Some(Key::Number(micros))) => {
                query.bind(Some(from_micros(micros)?))
            }
            (_, Some(_)) => return Err(bad_token()),
        };
        let rows = query.bind(after_id).bind(filter.limit + 1).fetch_all(&self.state.pool).await?;
        Ok(rows.iter().map(FileRecord::from_row).collect::<sqlx::Result<_>>()?)
    }
}

/// A time a page token carries; `INVALID_ARGUMENT` when it is out of range.
fn from_micros(micros: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).map_err(|_| bad_token())
}

/// A token whose key does not fit the listing (only a forged one can).
fn bad_token() -> FileError {
    FileError::invalid("page.page_token", "is not a page token of this listing")
}

/// What one `ListFiles` selects, and how it orders it.
struct Filter {
    tree: Tree,
    folder: Option<Uuid>,
    recursive: bool,
    kinds: Option<Vec<String>>,
    pattern: Option<String>,
    field: SortField,
    descending: bool,
    limit: i64,
}
