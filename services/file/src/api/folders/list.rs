//! `ListFolders`: the subfolders of one folder by name, or a whole tree depth-first, in pages.
//!
//! Both are keyset pages: a folder's children by `name` (unique among siblings), a tree by the
//! array of names from the listing's start down to each folder, which sorts a parent right
//! before its children and siblings by name.

use flatrender_proto::flatrender::common::v1::PageResponse;
use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, Row};

use super::tree::{self, Lock, Scope, Tree};
use crate::FileApi;
use crate::access::Actor;
use crate::error::Result;
use crate::model::{FOLDER_COLUMNS, FolderRecord};
use crate::{page, validate};

/// The request's page field, for errors.
const TOKEN_FIELD: &str = "page.page_token";

/// The folders right below the starting point (see [`Listing::query`]).
const STARTING_POINT: &str =
    "tenant_id = $1 AND owner_user_id IS NOT DISTINCT FROM $2 AND parent_id IS NOT DISTINCT FROM $3";

/// Names that match the name query, if any (see [`Listing::query`]).
const NAME_MATCHES: &str = "($4::text IS NULL OR lower(name) LIKE $4)";

/// What a listing selects, with the path prefix of its starting point.
struct Listing {
    tree: Tree,
    parent: Option<uuid::Uuid>,
    base_path: String,
    pattern: Option<String>,
    limit: i64,
    fingerprint: String,
}

impl FileApi {
    /// One page of `ListFolders`.
    pub(super) async fn folder_page(
        &self,
        actor: &Actor,
        req: &pb::ListFoldersRequest,
    ) -> Result<pb::ListFoldersResponse> {
        let page = req.page.clone().unwrap_or_default();
        let limit = validate::page_size("page.page_size", page.page_size)?;
        let parent = validate::optional_id("parent_id", &req.parent_id)?;
        let query = validate::name_query("name_query", &req.name_query)?;
        let pool = &self.state.pool;
        let chain = match parent {
            Some(id) => {
                tree::reachable(pool, actor, id, Lock::None).await?;
                tree::chain(pool, id).await?
            }
            None => Vec::new(),
        };
        let scope = Scope {
            tenant: None,
            owner: ("owner_user_id", &req.owner_user_id),
            tenant_owned: req.tenant_owned,
            anchor_field: "parent_id",
        };
        let tree = tree::resolve(actor, scope, chain.last())?;
        let fingerprint = page::fingerprint(&[&"folders", &tree, &parent, &req.recursive, &query]);
        let pattern = query.as_ref().map(validate::name_pattern);
        let listing = Listing { tree, parent, base_path: tree::path(&chain), pattern, limit, fingerprint };
        let (folders, next_page_token) = if req.recursive {
            listing.tree_page(pool, &page.page_token).await?
        } else {
            listing.children_page(pool, &page.page_token).await?
        };
        Ok(pb::ListFoldersResponse { folders, page: Some(PageResponse { next_page_token }) })
    }
}

impl Listing {
    /// Children of the starting point, by name after the token's name.
    async fn children_page(&self, pool: &sqlx::PgPool, token: &str) -> Result<(Vec<pb::Folder>, String)> {
        let after: Option<String> = page::decode(TOKEN_FIELD, &self.fingerprint, token)?;
        let sql = format!(
            "SELECT {FOLDER_COLUMNS} FROM file_mgr.folders
              WHERE {STARTING_POINT} AND {NAME_MATCHES} AND ($5::text IS NULL OR name > $5)
              ORDER BY name LIMIT $6"
        );
        let rows = self.query(sql).bind(after).bind(self.limit + 1).fetch_all(pool).await?;
        let mut folders = rows.iter().map(FolderRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
        let next = page::next_token(&mut folders, self.limit, |last| page::encode(&self.fingerprint, &last.name));
        let views =
            folders.iter().map(|folder| folder.to_proto(format!("{}/{}", self.base_path, folder.name))).collect();
        Ok((views, next))
    }

    /// Everything beneath the starting point, depth-first, after the token's name path.
    async fn tree_page(&self, pool: &sqlx::PgPool, token: &str) -> Result<(Vec<pb::Folder>, String)> {
        let after: Option<Vec<String>> = page::decode(TOKEN_FIELD, &self.fingerprint, token)?;
        let sql = format!(
            "WITH RECURSIVE t AS (
                 SELECT folders.*, ARRAY[folders.name] AS names, 1 AS depth FROM file_mgr.folders
                  WHERE {STARTING_POINT}
                 UNION ALL
                 SELECT f.*, t.names || f.name, t.depth + 1 FROM file_mgr.folders f JOIN t ON f.parent_id = t.id
                  WHERE t.depth < $7
             )
             SELECT {FOLDER_COLUMNS}, names FROM t
              WHERE {NAME_MATCHES} AND ($5::text[] IS NULL OR names > $5)
              ORDER BY names LIMIT $6"
        );
        let rows =
            self.query(sql).bind(after).bind(self.limit + 1).bind(2 * tree::MAX_DEPTH as i32).fetch_all(pool).await?;
        let mut folders = rows
            .iter()
            .map(|row| Ok((FolderRecord::from_row(row)?, row.try_get::<Vec<String>, _>("names")?)))
            .collect::<sqlx::Result<Vec<_>>>()?;
        let next = page::next_token(&mut folders, self.limit, |(_, names)| page::encode(&self.fingerprint, names));
        let views = folders
            .iter()
            .map(|(folder, names)| {
                let below: String = names.iter().map(|name| format!("/{name}")).collect();
                folder.to_proto(format!("{}{below}", self.base_path))
            })
            .collect();
        Ok((views, next))
    }

    /// `sql` with what both listings share bound: the starting point's tree and folder as `$1`
    /// to `$3` (see [`STARTING_POINT`]) and the name pattern as `$4` (see [`NAME_MATCHES`]).
    fn query(&self, sql: String) -> Query<'_, Postgres, PgArguments> {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(self.tree.tenant)
            .bind(self.tree.owner)
            .bind(self.parent)
            .bind(self.pattern.as_deref())
    }
}
