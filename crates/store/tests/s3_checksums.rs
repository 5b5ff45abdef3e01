//! The checksum settings against both S3 test servers. Regression: with
//! aws-sdk-s3's default flexible checksums, Garage 2.5 rejected a
//! CompleteMultipartUpload carrying per-part CRC32s for parts uploaded
//! without a declared algorithm ("InvalidDigest"). refugio declares CRC32
//! on the upload and every part with `WhenSupported`, and sends none with
//! `WhenRequired`; both must store and read back the same bytes.

use anyhow::{ensure, Result};
use bytes::Bytes;
use refugio_store::s3::S3Store;
use refugio_store::upload::{upload_stream, UploadOptions};
use refugio_store::{ChecksumCalculation, ObjectStore, S3Options, MIN_PART_SIZE};
use refugio_testkit::s3::{unique_prefix, S3Target};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

async fn read(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    store.get(key).await?.read_to_end(&mut out).await?;
    Ok(out)
}

async fn round_trips(target: &S3Target, checksums: ChecksumCalculation) -> Result<()> {
    let options = S3Options {
        region: Some(target.region.clone()),
        endpoint: Some(target.endpoint.clone()),
        force_path_style: true,
        checksum_calculation: checksums,
        static_credentials: Some((target.access_key.clone(), target.secret_key.clone())),
        ..S3Options::default()
    };
    let prefix = format!(
        "store/{}",
        unique_prefix(&format!("checksums-{checksums:?}"))
    );
    let store = S3Store::new(&target.bucket, &prefix, &options).await?;

    // Single PutObject.
    let single = data(1024 * 1024 + 3, 1);
    store
        .put(
            "single",
            Bytes::from(single.clone()),
            refugio_store::PutOptions::default(),
        )
        .await?;
    ensure!(
        read(&store, "single").await? == single,
        "put read back differs"
    );

    // Multipart through the trait: two full parts and a short last one.
    let parts = [
        data(MIN_PART_SIZE, 2),
        data(MIN_PART_SIZE, 3),
        data(4097, 4),
    ];
    let mut upload = store.put_multipart("multipart").await?;
    for part in &parts {
        upload.put_part(Bytes::from(part.clone())).await?;
    }
    upload.complete().await?;
    ensure!(
        read(&store, "multipart").await? == parts.concat(),
        "multipart read back differs"
    );

    // And the streaming upload.
    let streamed = data(2 * MIN_PART_SIZE + 12_345, 5);
    let outcome = upload_stream(
        &store,
        "streamed",
        &streamed[..],
        &UploadOptions {
            part_size: MIN_PART_SIZE,
            concurrency: 3,
            expected_size: None,
        },
    )
    .await?;
    ensure!(outcome.parts == 3, "{outcome:?}");
    ensure!(
        outcome.sha256 == hex::encode(Sha256::digest(&streamed)),
        "{outcome:?}"
    );
    ensure!(
        read(&store, "streamed").await? == streamed,
        "streamed read back differs"
    );
    ensure!(
        store.list_multipart_uploads("").await?.is_empty(),
        "no pending uploads"
    );
    Ok(())
}

#[tokio::test]
async fn garage_when_supported() -> Result<()> {
    round_trips(
        &refugio_testkit::s3::garage()?,
        ChecksumCalculation::WhenSupported,
    )
    .await
}

#[tokio::test]
async fn garage_when_required() -> Result<()> {
    round_trips(
        &refugio_testkit::s3::garage()?,
        ChecksumCalculation::WhenRequired,
    )
    .await
}

#[tokio::test]
async fn moto_when_supported() -> Result<()> {
    round_trips(
        &refugio_testkit::s3::moto()?,
        ChecksumCalculation::WhenSupported,
    )
    .await
}

#[tokio::test]
async fn moto_when_required() -> Result<()> {
    round_trips(
        &refugio_testkit::s3::moto()?,
        ChecksumCalculation::WhenRequired,
    )
    .await
}
