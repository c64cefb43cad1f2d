//! `token_keys` (migration 5): the keys that sign VERP return paths, unsubscribe addresses and
//! one-click links (`petrel-reports`). The control plane creates the first one at its first
//! start ([`ensure`]) and pushes every unretired key in the policy snapshot; the newest signs.
//! Sealed under the operator's data key (issue 16, `sealed.rs`).

use sqlx::{AnyConnection, Row};

use super::sealed::{aad, Sealer};
use super::StoreResult;

fn secret_aad(id: i64) -> String {
    aad("token_keys", "secret", &id.to_string())
}

/// Bytes of a new key (256 bits).
pub const TOKEN_KEY_BYTES: usize = 32;

/// One key row.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKeyRow {
    /// 1..=255: the key id written in tokens.
    pub id: u8,
    pub secret: Vec<u8>,
    pub created_unix_ms: i64,
}

impl std::fmt::Debug for TokenKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeyRow")
            .field("id", &self.id)
            .field("created_unix_ms", &self.created_unix_ms)
            .finish_non_exhaustive()
    }
}

/// Every unretired key, oldest first (the last one signs).
pub async fn active(conn: &mut AnyConnection, sealer: &Sealer) -> StoreResult<Vec<TokenKeyRow>> {
    let rows = sqlx::query(
        "SELECT id, secret, created_unix_ms FROM token_keys WHERE retired_unix_ms IS NULL \
         ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        keys.push(TokenKeyRow {
            id: u8::try_from(id).map_err(|_| super::StoreError::Corrupt {
                column: "token_keys.id",
                reason: id.to_string(),
            })?,
            secret: sealer
                .open_bytes(conn, &secret_aad(id), &r.try_get::<Vec<u8>, _>("secret")?)
                .await?
                .ok_or(super::StoreError::Corrupt {
                    column: "token_keys.secret",
                    reason: "its data key is gone".into(),
                })?,
            created_unix_ms: r.try_get("created_unix_ms")?,
        });
    }
    Ok(keys)
}

/// Creates key 1 when there is none (first start); a no-op afterwards. Returns the active keys.
/// Run in a write transaction, so two nodes starting at once create one key.
pub async fn ensure(
    conn: &mut AnyConnection,
    sealer: &Sealer,
    now_unix_ms: i64,
) -> StoreResult<Vec<TokenKeyRow>> {
    let keys = active(&mut *conn, sealer).await?;
    if !keys.is_empty() {
        return Ok(keys);
    }
    let secret: [u8; TOKEN_KEY_BYTES] = rand::random();
    let secret = sealer
        .seal_bytes(conn, None, &secret_aad(1), &secret)
        .await?;
    sqlx::query(
        "INSERT INTO token_keys (id, secret, created_unix_ms) VALUES (1, $1, $2) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(secret)
    .bind(now_unix_ms)
    .execute(&mut *conn)
    .await?;
    active(conn, sealer).await
}

/// Seals secrets stored before sealing. Returns how many.
pub(super) async fn seal_existing(conn: &mut AnyConnection, sealer: &Sealer) -> StoreResult<u64> {
    let rows = sqlx::query("SELECT id, secret FROM token_keys")
        .fetch_all(&mut *conn)
        .await?;
    let mut n = 0;
    for r in rows {
        let id: i64 = r.try_get("id")?;
        let stored: Vec<u8> = r.try_get("secret")?;
        if stored.starts_with(super::sealed::SEALED_BYTES_PREFIX) {
            continue;
        }
        let sealed = sealer
            .seal_bytes(conn, None, &secret_aad(id), &stored)
            .await?;
        sqlx::query("UPDATE token_keys SET secret = $1 WHERE id = $2")
            .bind(sealed)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        n += 1;
    }
    Ok(n)
}
