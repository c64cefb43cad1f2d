//! `engine_identities` (migration 12): one credential per engine (issue 16), so the control
//! plane can cut off one engine alone. The token is shown once; its argon2id hash is stored.
//! An engine id with an identity must present its own token, never the shared one; a revoked
//! identity is refused.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::StoreResult;

/// One identity, as the API shows it (never the token or its hash).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EngineIdentity {
    pub engine_id: String,
    /// The token's first characters, to tell tokens apart.
    pub prefix: String,
    pub created_unix_ms: i64,
    pub revoked_unix_ms: Option<i64>,
}

/// An identity with its stored hash (the push server's check).
#[derive(Debug, Clone)]
pub struct StoredIdentity {
    pub identity: EngineIdentity,
    pub token_phc: String,
}

/// The identity of `engine_id`, if it has one.
pub async fn get(conn: &mut AnyConnection, engine_id: &str) -> StoreResult<Option<StoredIdentity>> {
    let row = sqlx::query("SELECT * FROM engine_identities WHERE engine_id = $1")
        .bind(engine_id.to_string())
        .fetch_optional(conn)
        .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(StoredIdentity {
        identity: EngineIdentity {
            engine_id: r.try_get("engine_id")?,
            prefix: r.try_get("prefix")?,
            created_unix_ms: r.try_get("created_unix_ms")?,
            revoked_unix_ms: r.try_get("revoked_unix_ms")?,
        },
        token_phc: r.try_get("token_phc")?,
    }))
}

/// Creates or replaces `engine_id`'s identity: the old token stops working.
pub async fn put(
    conn: &mut AnyConnection,
    engine_id: &str,
    prefix: &str,
    token_phc: &str,
    now_unix_ms: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO engine_identities (engine_id, prefix, token_phc, created_unix_ms, \
         revoked_unix_ms) VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (engine_id) DO UPDATE SET \
         prefix = excluded.prefix, token_phc = excluded.token_phc, \
         created_unix_ms = excluded.created_unix_ms, revoked_unix_ms = NULL",
    )
    .bind(engine_id.to_string())
    .bind(prefix.to_string())
    .bind(token_phc.to_string())
    .bind(now_unix_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes `engine_id`'s identity; false when it has none.
pub async fn revoke(
    conn: &mut AnyConnection,
    engine_id: &str,
    now_unix_ms: i64,
) -> StoreResult<bool> {
    let n = sqlx::query(
        "UPDATE engine_identities SET revoked_unix_ms = $1 WHERE engine_id = $2 \
         AND revoked_unix_ms IS NULL",
    )
    .bind(now_unix_ms)
    .bind(engine_id.to_string())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Every identity, by engine id.
pub async fn list(conn: &mut AnyConnection) -> StoreResult<Vec<EngineIdentity>> {
    sqlx::query("SELECT * FROM engine_identities ORDER BY engine_id")
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| {
            Ok(EngineIdentity {
                engine_id: r.try_get("engine_id")?,
                prefix: r.try_get("prefix")?,
                created_unix_ms: r.try_get("created_unix_ms")?,
                revoked_unix_ms: r.try_get("revoked_unix_ms")?,
            })
        })
        .collect()
}
