//! The one state every handler shares; `startup` builds it and checks its readiness.

use sqlx::PgPool;

use crate::{auth::AdminToken, cache::Cache, coalesce::Writer};

/// The one state every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    /// Where the analytics consumer keeps its statistics: `db` unless configured apart.
    pub analytics: PgPool,
    pub cache: Cache,
    pub admin: AdminToken,
    pub writer: Writer,
}
