//! Backup ids claimed by concurrent processes never collide (fault scenario
//! 17 below the job lock): many claims for one job and one start second at
//! once, on a directory, moto and Garage (which ignores `If-None-Match`),
//! each get a different id, and released claims leave nothing behind.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Result;
use chrono::{TimeZone, Utc};
use futures::TryStreamExt;
use refugio_store::repo::Repository;
use refugio_store::s3::S3Store;
use refugio_store::{ObjectMeta, ObjectStore, S3Options};
use refugio_testkit::s3::{self, unique_prefix, S3Target};

const CLAIMS: usize = 8;

async fn claims_never_collide(store: Arc<dyn ObjectStore>) -> Result<()> {
    let start = Utc
        .with_ymd_and_hms(2026, 11, 28, 6, 0, 0)
        .single()
        .expect("time");
    let repo = Repository::new(Arc::clone(&store));
    // Every claim starts at once, for the same second.
    let claims =
        futures::future::try_join_all((0..CLAIMS).map(|_| repo.claim_backup_id("app", start)))
            .await?;
    let ids: BTreeSet<String> = claims.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), CLAIMS, "every claim has its own id: {ids:?}");
    // (Claims that meet give the id up, all of them if they all saw each
    // other: the first id may stay free. Distinct is what matters.)
    // Each id holds exactly its own claim.
    let listed: Vec<ObjectMeta> = store.list("app/").try_collect().await?;
    assert_eq!(listed.len(), CLAIMS, "one claim object per id: {listed:?}");
    // A later claim of the same second takes a fresh id too.
    let later = repo.claim_backup_id("app", start).await?;
    assert!(!ids.contains(&later.id), "{} reused", later.id);
    for claim in claims.iter().chain([&later]) {
        repo.release_claim(claim).await;
    }
    let listed: Vec<ObjectMeta> = store.list("app/").try_collect().await?;
    assert!(
        listed.is_empty(),
        "released claims leave nothing: {listed:?}"
    );
    Ok(())
}

async fn s3_store(target: &S3Target) -> Result<Arc<dyn ObjectStore>> {
    let options = S3Options {
        region: Some(target.region.clone()),
        endpoint: Some(target.endpoint.clone()),
        force_path_style: true,
        static_credentials: Some((target.access_key.clone(), target.secret_key.clone())),
        ..S3Options::default()
    };
    let prefix = format!("store/{}", unique_prefix("claims"));
    Ok(Arc::new(
        S3Store::new(&target.bucket, &prefix, &options).await?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_on_a_directory_never_collide() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = refugio_store::fs::FsStore::new(tmp.path().join("repo"))?;
    claims_never_collide(Arc::new(store)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_on_moto_never_collide() -> Result<()> {
    claims_never_collide(s3_store(&s3::moto()?).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_on_garage_never_collide() -> Result<()> {
    claims_never_collide(s3_store(&s3::garage()?).await?).await
}
