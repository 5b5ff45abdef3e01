//! Benchmark helper (scripts/bench-prune): clones one committed backup of a
//! job into N older synthetic backups (same artifacts and receipts, new ids
//! and snapshot times), so prune can be measured on a large repository.
//!
//! Usage: synth_backups S3_URL ENDPOINT REGION JOB TEMPLATE_ID COUNT
//! (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).

use futures::{StreamExt, TryStreamExt};
use refugio_store::PutOptions;
use refugio_store::{open, RepositoryLocation, S3Options};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        a.len() == 7,
        "usage: synth_backups S3_URL ENDPOINT REGION JOB TEMPLATE_ID COUNT"
    );
    let (url, endpoint, region, job, template) = (&a[1], &a[2], &a[3], &a[4], &a[5]);
    let count: i64 = a[6].parse()?;
    let creds = (
        std::env::var("AWS_ACCESS_KEY_ID")?,
        std::env::var("AWS_SECRET_ACCESS_KEY")?,
    );
    let opts = S3Options {
        region: Some(region.clone()),
        endpoint: Some(endpoint.clone()),
        force_path_style: true,
        static_credentials: Some(creds),
        ..Default::default()
    };
    let store = open(&RepositoryLocation::parse(url)?, &opts).await?;
    let objects: Vec<_> = store
        .list(&format!("{job}/{template}/"))
        .try_collect()
        .await?;
    let mut originals = Vec::new();
    for o in &objects {
        let mut buf = Vec::new();
        store.get(&o.key).await?.read_to_end(&mut buf).await?;
        originals.push((
            o.key.rsplit('/').next().unwrap_or_default().to_string(),
            buf,
        ));
    }
    let base =
        chrono::DateTime::parse_from_rfc3339("2010-01-01T00:00:00Z")?.with_timezone(&chrono::Utc);
    futures::stream::iter(0..count)
        .map(|i| {
            let store = store.clone();
            let originals = &originals;
            async move {
                let at = base + chrono::Duration::hours(6 * i);
                let id = refugio_store::repo::backup_id(at, 1);
                let mut manifest = None;
                for (name, bytes) in originals {
                    let mut body = bytes.clone();
                    if name.ends_with(".json") {
                        let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
                        v["backup_id"] = id.clone().into();
                        if name == "manifest.json" {
                            v["snapshot_at"] = serde_json::to_value(at)?;
                        }
                        body = serde_json::to_vec(&v)?;
                    }
                    let key = format!("{job}/{id}/{name}");
                    if name == "manifest.json" {
                        manifest = Some((key, body));
                    } else {
                        store.put(&key, body.into(), PutOptions::default()).await?;
                    }
                }
                if let Some((key, body)) = manifest {
                    store.put(&key, body.into(), PutOptions::default()).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    println!("created {count} synthetic backups of {job} from {template}");
    Ok(())
}
