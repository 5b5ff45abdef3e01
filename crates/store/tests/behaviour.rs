//! One behavioural suite for every `ObjectStore` backend: the directory
//! store (in a tempdir), moto and Garage, the S3 servers with both checksum
//! settings. The S3 servers come from `scripts/services start`; a test that
//! cannot find its server fails and says how to start it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use refugio_store::s3::S3Store;
use refugio_store::{ChecksumCalculation, Error, ObjectStore, S3Options};
use refugio_testkit::s3::{unique_prefix, S3Target};

/// The suite: each case takes a store of its own (a fresh directory or a
/// fresh key prefix) and asserts on what the store does.
mod suite {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use anyhow::{ensure, Context as _, Result};
    use bytes::Bytes;
    use futures::{StreamExt, TryStreamExt};
    use refugio_store::upload::{upload_stream, UploadOptions};
    use refugio_store::verified::get_verified;
    use refugio_store::{Error, ObjectMeta, ObjectStore, MIN_PART_SIZE};
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

    /// Deterministic, incompressible, position-dependent bytes: a part
    /// stored at the wrong offset or in the wrong order shows.
    pub fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    async fn read(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        store.get(key).await?.read_to_end(&mut out).await?;
        Ok(out)
    }

    async fn keys(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<String>> {
        let listed: Vec<ObjectMeta> = store.list(prefix).try_collect().await?;
        Ok(listed.into_iter().map(|m| m.key).collect())
    }

    /// Pending uploads may take a moment to disappear when the abort runs
    /// in a spawned task; waits up to 10 s for none to be left.
    async fn no_pending_uploads(store: &dyn ObjectStore, prefix: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pending = store.list_multipart_uploads(prefix).await?;
            if pending.is_empty() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "uploads left pending: {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Yields its data, then fails like a producer (pg_dump) dying.
    struct FailingReader {
        data: io::Cursor<Vec<u8>>,
    }

    impl AsyncRead for FailingReader {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            match Pin::new(&mut self.data).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before => {
                    Poll::Ready(Err(io::Error::other("pg_dump exited with status 1")))
                }
                other => other,
            }
        }
    }

    /// Yields its data, then never anything again (a stalled producer).
    struct StallingReader {
        data: io::Cursor<Vec<u8>>,
    }

    impl AsyncRead for StallingReader {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            match Pin::new(&mut self.data).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before => Poll::Pending,
                other => other,
            }
        }
    }

    pub async fn put_get_head(store: &dyn ObjectStore) -> Result<()> {
        let body = data(100_000, 1);
        store
            .put(
                "job/b1/small.bin",
                Bytes::from(body.clone()),
                refugio_store::PutOptions::default(),
            )
            .await?;
        ensure!(
            read(store, "job/b1/small.bin").await? == body,
            "get returns what put stored"
        );
        let meta = store
            .head("job/b1/small.bin")
            .await?
            .context("head finds the object")?;
        ensure!(
            meta.key == "job/b1/small.bin" && meta.size == 100_000,
            "{meta:?}"
        );
        ensure!(meta.last_modified.is_some(), "{meta:?}");
        ensure!(
            store.head("job/b1/other.bin").await?.is_none(),
            "head of a missing key"
        );

        // Overwrite, and an empty object.
        store
            .put(
                "job/b1/small.bin",
                Bytes::from_static(b"v2"),
                refugio_store::PutOptions::default(),
            )
            .await?;
        ensure!(
            read(store, "job/b1/small.bin").await? == b"v2",
            "overwritten"
        );
        store
            .put(
                "job/b1/empty",
                Bytes::new(),
                refugio_store::PutOptions::default(),
            )
            .await?;
        ensure!(
            read(store, "job/b1/empty").await?.is_empty(),
            "empty object"
        );
        ensure!(
            store.head("job/b1/empty").await?.map(|m| m.size) == Some(0),
            "empty head"
        );
        ensure!(
            keys(store, "").await? == ["job/b1/empty", "job/b1/small.bin"],
            "list shows both"
        );
        Ok(())
    }

    pub async fn get_missing_is_not_found(store: &dyn ObjectStore) -> Result<()> {
        match store.get("no/such/object").await {
            Err(Error::NotFound { key, store: name }) => {
                ensure!(key == "no/such/object", "{key}");
                ensure!(name == store.describe(), "{name}");
                Ok(())
            }
            Err(other) => anyhow::bail!("expected NotFound, got {other:?}"),
            Ok(_) => anyhow::bail!("expected NotFound, got an object"),
        }
    }

    pub async fn multipart_parts_round_trip(store: &dyn ObjectStore) -> Result<()> {
        let parts = [
            data(MIN_PART_SIZE + 1, 2),
            data(MIN_PART_SIZE + 7, 3),
            data(MIN_PART_SIZE, 4),
            data(123_456, 5),
        ];
        let mut upload = store.put_multipart("job/b1/db.dump").await?;
        // All parts in flight together; they resolve in any order.
        let futures: Vec<_> = parts
            .iter()
            .map(|p| upload.put_part(Bytes::from(p.clone())))
            .collect();
        ensure!(
            store.head("job/b1/db.dump").await?.is_none(),
            "invisible before complete"
        );
        futures::future::try_join_all(futures).await?;
        ensure!(
            store.head("job/b1/db.dump").await?.is_none(),
            "invisible before complete"
        );
        upload.complete().await?;

        let expected: Vec<u8> = parts.concat();
        let got = read(store, "job/b1/db.dump").await?;
        ensure!(
            got.len() == expected.len(),
            "size {} != {}",
            got.len(),
            expected.len()
        );
        ensure!(got == expected, "content differs");
        ensure!(
            store.head("job/b1/db.dump").await?.map(|m| m.size) == Some(expected.len() as u64),
            "head size"
        );
        ensure!(
            keys(store, "").await? == ["job/b1/db.dump"],
            "only the object is listed"
        );
        no_pending_uploads(store, "").await
    }

    pub async fn upload_stream_round_trip(store: &dyn ObjectStore) -> Result<()> {
        let input = data(4 * MIN_PART_SIZE + 3 * MIN_PART_SIZE / 5 + 17, 6);
        let options = UploadOptions {
            part_size: MIN_PART_SIZE,
            concurrency: 2,
            expected_size: None,
        };
        let outcome = upload_stream(store, "job/b2/db.dump", &input[..], &options).await?;
        ensure!(outcome.size == input.len() as u64, "{outcome:?}");
        ensure!(outcome.sha256 == sha(&input), "{outcome:?}");
        // S3 cuts by the options' part size; a directory by its own.
        let part = store.fixed_part_size().unwrap_or(MIN_PART_SIZE);
        let parts = match store.fixed_part_size() {
            Some(fixed) => input.len().div_ceil(fixed),
            None => 5,
        };
        ensure!(outcome.parts == parts, "{outcome:?}");

        let mut verified =
            get_verified(store, "job/b2/db.dump", outcome.size, &outcome.sha256).await?;
        let mut got = Vec::new();
        verified.read_to_end(&mut got).await?;
        ensure!(got == input, "content differs");
        ensure!(verified.is_verified(), "verified to EOF");

        // A stream exactly one part long, one smaller, and an empty one.
        for (key, len) in [
            ("job/b2/exact", part),
            ("job/b2/small", 1000),
            ("job/b2/empty", 0),
        ] {
            let input = data(len, 7);
            let outcome = upload_stream(store, key, &input[..], &options).await?;
            ensure!(
                outcome.size == len as u64 && outcome.sha256 == sha(&input),
                "{key}: {outcome:?}"
            );
            ensure!(outcome.parts == 1, "{key}: {outcome:?}");
            ensure!(read(store, key).await? == input, "{key}: content differs");
        }
        no_pending_uploads(store, "").await
    }

    pub async fn upload_stream_aborts_when_the_reader_fails(store: &dyn ObjectStore) -> Result<()> {
        let reader = FailingReader {
            data: io::Cursor::new(data(2 * MIN_PART_SIZE + 1000, 8)),
        };
        let options = UploadOptions {
            part_size: MIN_PART_SIZE,
            concurrency: 2,
            expected_size: None,
        };
        match upload_stream(store, "job/b3/db.dump", reader, &options).await {
            Err(Error::Source { key, source }) => {
                ensure!(key == "job/b3/db.dump", "{key}");
                ensure!(source.to_string().contains("pg_dump exited"), "{source}");
            }
            other => anyhow::bail!("expected Error::Source, got {other:?}"),
        }
        ensure!(
            store.head("job/b3/db.dump").await?.is_none(),
            "nothing visible under the key"
        );
        ensure!(keys(store, "").await?.is_empty(), "nothing listed");
        ensure!(
            store.list_multipart_uploads("").await?.is_empty(),
            "no upload left pending"
        );
        Ok(())
    }

    pub async fn upload_stream_aborts_when_dropped(store: &dyn ObjectStore) -> Result<()> {
        let reader = StallingReader {
            data: io::Cursor::new(data(2 * MIN_PART_SIZE + 1000, 9)),
        };
        let options = UploadOptions {
            part_size: MIN_PART_SIZE,
            concurrency: 2,
            expected_size: None,
        };
        let upload = upload_stream(store, "job/b4/db.dump", reader, &options);
        let timed_out = tokio::time::timeout(Duration::from_secs(3), upload).await;
        ensure!(
            timed_out.is_err(),
            "the stalled upload cannot finish: {timed_out:?}"
        );
        // The drop spawned the abort; it runs in the background.
        no_pending_uploads(store, "").await?;
        ensure!(
            store.head("job/b4/db.dump").await?.is_none(),
            "nothing visible under the key"
        );
        ensure!(keys(store, "").await?.is_empty(), "nothing listed");
        Ok(())
    }

    pub async fn abort_leaves_nothing(store: &dyn ObjectStore) -> Result<()> {
        let mut upload = store.put_multipart("job/b5/db.dump").await?;
        upload
            .put_part(Bytes::from(data(MIN_PART_SIZE, 10)))
            .await?;
        upload.put_part(Bytes::from(data(1000, 11))).await?;
        let pending = store.list_multipart_uploads("job/").await?;
        ensure!(
            pending.len() == 1 && pending[0].key == "job/b5/db.dump",
            "{pending:?}"
        );
        upload.abort().await?;
        ensure!(
            store.head("job/b5/db.dump").await?.is_none(),
            "nothing visible"
        );
        ensure!(keys(store, "").await?.is_empty(), "nothing listed");
        no_pending_uploads(store, "").await?;

        // An upload abandoned by a crash, found and aborted by listing.
        let mut abandoned = store.put_multipart("job/b6/db.dump").await?;
        abandoned.put_part(Bytes::from(data(1000, 12))).await?;
        drop(abandoned);
        let pending = store.list_multipart_uploads("job/b6/").await?;
        ensure!(
            pending.len() == 1 && pending[0].key == "job/b6/db.dump",
            "{pending:?}"
        );
        ensure!(
            store.list_multipart_uploads("other/").await?.is_empty(),
            "prefix filters"
        );
        store.abort_multipart(&pending[0]).await?;
        ensure!(
            store.list_multipart_uploads("").await?.is_empty(),
            "aborted by listing"
        );
        ensure!(keys(store, "").await?.is_empty(), "nothing listed");
        Ok(())
    }

    pub async fn list_paginates_in_key_order(store: &dyn ObjectStore) -> Result<()> {
        const COUNT: usize = 1100;
        let expected: Vec<String> = (0..COUNT).map(|i| format!("many/{i:05}")).collect();
        futures::stream::iter(expected.iter().rev())
            .map(|key| {
                store.put(
                    key,
                    Bytes::from(key.clone()),
                    refugio_store::PutOptions::default(),
                )
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        store
            .put(
                "other/x",
                Bytes::from_static(b"x"),
                refugio_store::PutOptions::default(),
            )
            .await?;
        store
            .put(
                "man",
                Bytes::from_static(b"x"),
                refugio_store::PutOptions::default(),
            )
            .await?;

        let listed: Vec<ObjectMeta> = store.list("many/").try_collect().await?;
        ensure!(listed.len() == COUNT, "listed {} of {COUNT}", listed.len());
        let listed_keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
        ensure!(listed_keys == expected, "keys are all there, in order");
        ensure!(listed.iter().all(|m| m.size == 10), "sizes");

        // Taking only the first item of a listing works (and on S3 costs one page).
        let first = store.list("").next().await.context("a first object")??;
        ensure!(first.key == "man", "{first:?}");
        ensure!(
            keys(store, "").await?.len() == COUNT + 2,
            "everything under the root"
        );
        ensure!(
            keys(store, "many/0109").await?
                == [
                    "many/01090",
                    "many/01091",
                    "many/01092",
                    "many/01093",
                    "many/01094",
                    "many/01095",
                    "many/01096",
                    "many/01097",
                    "many/01098",
                    "many/01099"
                ],
            "partial-name prefix"
        );
        Ok(())
    }

    pub async fn list_prefixes(store: &dyn ObjectStore) -> Result<()> {
        for key in [
            "p/job1/b1/m",
            "p/job1/b2/m",
            "p/job1/b2/n",
            "p/job2/b1/m",
            "p/top",
            "q",
        ] {
            store
                .put(
                    key,
                    Bytes::from_static(b"1"),
                    refugio_store::PutOptions::default(),
                )
                .await?;
        }
        ensure!(store.list_prefixes("").await? == ["p"], "root");
        ensure!(
            store.list_prefixes("p/").await? == ["p/job1", "p/job2"],
            "jobs"
        );
        ensure!(
            store.list_prefixes("p/job1/").await? == ["p/job1/b1", "p/job1/b2"],
            "backups"
        );
        ensure!(
            store.list_prefixes("p/job1/b2/").await?.is_empty(),
            "leaves only"
        );
        ensure!(
            store.list_prefixes("nothing/").await?.is_empty(),
            "missing prefix"
        );
        store.delete("p/job2/b1/m").await?;
        ensure!(
            store.list_prefixes("p/").await? == ["p/job1"],
            "a deleted prefix disappears"
        );
        Ok(())
    }

    pub async fn delete_objects(store: &dyn ObjectStore) -> Result<()> {
        store
            .put(
                "d/a",
                Bytes::from_static(b"a"),
                refugio_store::PutOptions::default(),
            )
            .await?;
        store
            .put(
                "d/b",
                Bytes::from_static(b"b"),
                refugio_store::PutOptions::default(),
            )
            .await?;
        store.delete("d/a").await?;
        ensure!(store.head("d/a").await?.is_none(), "deleted");
        ensure!(
            matches!(store.get("d/a").await, Err(Error::NotFound { .. })),
            "get after delete"
        );
        ensure!(keys(store, "").await? == ["d/b"], "the other object stays");
        store.delete("d/a").await?;
        store.delete("never/existed").await?;
        Ok(())
    }

    /// Deleting what is not there succeeds, alone or in a batch: a missing
    /// key, a key under an object, a key given twice, and the objects of
    /// whole backups deleted together as prune does (in the directory
    /// store the last delete in a directory removes it while the others in
    /// it may still be finishing). Repeated, so that a race shows.
    pub async fn delete_missing_is_ok(store: &dyn ObjectStore) -> Result<()> {
        store.delete("never/existed").await?;
        store
            .put(
                "d/a",
                Bytes::from_static(b"a"),
                refugio_store::PutOptions::default(),
            )
            .await?;
        store.delete("d/b").await?;
        store.delete("d/a/under-an-object").await?;
        let twice = ["d/a", "d/a", "gone/x"].map(String::from);
        let failed = store.delete_many(&twice).await?;
        ensure!(
            failed.is_empty(),
            "deleting twice or a missing key: {failed:?}"
        );
        ensure!(keys(store, "").await?.is_empty(), "d/a deleted");

        const NAMES: [&str; 3] = [
            "database.dump.zst",
            "globals.sql.zst",
            "verify-20261128T070000.000Z-ok.json",
        ];
        for round in 0..100 {
            let batch: Vec<String> = (0..2)
                .flat_map(|b| NAMES.map(|n| format!("app/2026112{b}T{round:06}Z/{n}")))
                .collect();
            futures::stream::iter(&batch)
                .map(|key| {
                    store.put(
                        key,
                        Bytes::from_static(b"x"),
                        refugio_store::PutOptions::default(),
                    )
                })
                .buffer_unordered(8)
                .try_collect::<Vec<()>>()
                .await?;
            let failed = store.delete_many(&batch).await?;
            ensure!(failed.is_empty(), "round {round}: {failed:?}");
            ensure!(
                store.list_prefixes("app/").await?.is_empty(),
                "round {round}: backups left"
            );
        }
        Ok(())
    }
}

/// Runs each named suite case against every backend.
macro_rules! behaviour {
    ($($case:ident),* $(,)?) => {
        mod fs_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let dir = tempfile::tempdir()?;
                    let store = refugio_store::fs::FsStore::new(dir.path().join("repo"))?;
                    super::suite::$case(&store).await
                }
            )*
        }
        behaviour!(@s3 moto_when_supported, moto, WhenSupported, $($case),*);
        behaviour!(@s3 moto_when_required, moto, WhenRequired, $($case),*);
        behaviour!(@s3 garage_when_supported, garage, WhenSupported, $($case),*);
        behaviour!(@s3 garage_when_required, garage, WhenRequired, $($case),*);
    };
    (@s3 $module:ident, $server:ident, $checksums:ident, $($case:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let target = refugio_testkit::s3::$server()?;
                    let store = super::s3_store(
                        &target,
                        refugio_store::ChecksumCalculation::$checksums,
                        stringify!($case),
                    )
                    .await?;
                    super::suite::$case(&store).await
                }
            )*
        }
    };
}

behaviour!(
    put_get_head,
    get_missing_is_not_found,
    multipart_parts_round_trip,
    upload_stream_round_trip,
    upload_stream_aborts_when_the_reader_fails,
    upload_stream_aborts_when_dropped,
    abort_leaves_nothing,
    list_paginates_in_key_order,
    list_prefixes,
    delete_objects,
    delete_missing_is_ok,
);

fn s3_options(target: &S3Target, checksums: ChecksumCalculation) -> S3Options {
    S3Options {
        region: Some(target.region.clone()),
        endpoint: Some(target.endpoint.clone()),
        force_path_style: true,
        checksum_calculation: checksums,
        static_credentials: Some((target.access_key.clone(), target.secret_key.clone())),
        ..S3Options::default()
    }
}

/// A store on the shared test bucket under a fresh prefix.
async fn s3_store(
    target: &S3Target,
    checksums: ChecksumCalculation,
    case: &str,
) -> Result<S3Store> {
    let prefix = format!("store/{}", unique_prefix(case));
    Ok(S3Store::new(&target.bucket, &prefix, &s3_options(target, checksums)).await?)
}

/// An S3 endpoint nobody listens on fails fast, as a temporary error that
/// names the endpoint, and without the credentials.
#[tokio::test]
async fn unreachable_endpoint_is_a_temporary_error_naming_it() -> Result<()> {
    let endpoint = format!("http://127.0.0.1:{}", refugio_testkit::s3::dead_port());
    let target = S3Target {
        kind: refugio_testkit::s3::S3Kind::Moto,
        endpoint: endpoint.clone(),
        region: "us-east-1".into(),
        bucket: "refugio-test".into(),
        access_key: "AKIDEXAMPLEKEY".into(),
        secret_key: "wJalrXUtnFEMIsecretEXAMPLEKEY".into(),
    };
    let store: Arc<dyn ObjectStore> = Arc::new(
        S3Store::new(
            &target.bucket,
            "p",
            &s3_options(&target, ChecksumCalculation::WhenSupported),
        )
        .await?,
    );
    let started = Instant::now();
    let error = store
        .put(
            "job/x",
            bytes::Bytes::from_static(b"x"),
            refugio_store::PutOptions::default(),
        )
        .await
        .expect_err("nothing listens there");
    let elapsed = started.elapsed();
    let Error::S3 {
        op,
        key,
        message,
        temporary,
        ..
    } = &error
    else {
        anyhow::bail!("expected Error::S3, got {error:?}");
    };
    assert_eq!(*op, "PutObject");
    assert_eq!(key, "job/x");
    assert!(*temporary, "connection refused is worth a retry: {error}");
    assert!(error.is_temporary());
    assert!(
        message.contains(&format!("cannot connect to {endpoint}")),
        "{message}"
    );
    let text = format!("{error} {error:?} {store:?}");
    assert!(!text.contains("wJalrXUtnFEMIsecretEXAMPLEKEY"), "{text}");
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    eprintln!("after {elapsed:?}: {error}");

    let listed: Result<Vec<_>, _> = futures::TryStreamExt::try_collect(store.list("")).await;
    assert!(
        matches!(
            listed,
            Err(Error::S3 {
                temporary: true,
                ..
            })
        ),
        "{listed:?}"
    );
    let got = store.get("job/x").await.map(|_| ());
    assert!(
        matches!(
            got,
            Err(Error::S3 {
                temporary: true,
                ..
            })
        ),
        "{got:?}"
    );
    Ok(())
}

/// `open` makes a directory store from a location, creating the directory.
#[tokio::test]
async fn open_creates_the_directory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("new/repo");
    let location = refugio_store::RepositoryLocation::parse(&format!("file://{}", path.display()))?;
    let store = refugio_store::open(&location, &S3Options::default()).await?;
    assert!(path.is_dir());
    assert_eq!(store.describe(), location.to_string());
    store
        .put(
            "a",
            bytes::Bytes::from_static(b"1"),
            refugio_store::PutOptions::default(),
        )
        .await?;
    assert!(path.join("a").is_file());
    Ok(())
}

/// `open` of an S3 location does not contact the server.
#[tokio::test]
async fn open_s3_is_lazy() -> Result<()> {
    let options = S3Options {
        region: Some("us-east-1".into()),
        endpoint: Some(format!(
            "http://127.0.0.1:{}",
            refugio_testkit::s3::dead_port()
        )),
        force_path_style: true,
        static_credentials: Some(("id".into(), "secret".into())),
        ..S3Options::default()
    };
    let location = refugio_store::RepositoryLocation::parse("s3://bucket/some/prefix")?;
    let store = refugio_store::open(&location, &options)
        .await
        .context("opening does not connect")?;
    assert_eq!(store.describe(), "s3://bucket/some/prefix");
    Ok(())
}
