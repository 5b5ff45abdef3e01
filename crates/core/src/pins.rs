//! Pins: an object named `pinned` beside a backup's manifest keeps the
//! backup whatever the retention policy says.

use bytes::Bytes;
use refugio_store::repo::Repository;
use refugio_store::PutOptions;

use crate::clock::Clock;
use crate::error::Result;

/// Object name that pins a backup.
pub const PIN_NAME: &str = "pinned";

/// Pins (`pin = true`) or unpins a committed backup (`latest` or an id);
/// returns its id.
pub async fn set_pin(
    repo: &Repository,
    job: &str,
    backup: &str,
    pin: bool,
    clock: &dyn Clock,
) -> Result<String> {
    let m = repo.resolve(job, backup).await?;
    let key = Repository::key(job, &m.backup_id, PIN_NAME);
    if pin {
        let body = serde_json::json!({ "pinned_at": clock.now() }).to_string();
        repo.store()
            .put(&key, Bytes::from(body), PutOptions::default())
            .await?;
    } else {
        repo.store().delete(&key).await?;
    }
    Ok(m.backup_id)
}
