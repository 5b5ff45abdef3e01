//! The fault proxy in front of the real S3 test servers, driven by the AWS
//! SDK as refugio drives it: every fault is observed from the client side
//! (the error, the retry that recovers, what the server stored) and in the
//! proxy's counts. Needs `scripts/services start` and `.test-services/env`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use refugio_testkit::fault_proxy::{ProxyTotals, INTERNAL_ERROR_XML, SLOW_DOWN_XML};
use refugio_testkit::{garage, moto, unique_prefix, FaultProxy, Rule, RuleStats, S3Target};

/// moto's smallest part but the last.
const PART: usize = 5 * 1024 * 1024;

/// A client for `target` making at most `attempts` attempts per operation,
/// with short back-offs so retries cost little time.
fn client(target: &S3Target, attempts: u32) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(target.region.clone()))
        .endpoint_url(&target.endpoint)
        .credentials_provider(Credentials::new(
            &target.access_key,
            &target.secret_key,
            None,
            None,
            "testkit",
        ))
        .force_path_style(true)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_initial_backoff(Duration::from_millis(10))
                .with_max_backoff(Duration::from_millis(50)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(20))
                .build(),
        )
        .build();
    Client::from_conf(config)
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

fn key(name: &str) -> String {
    format!("fault-proxy/{}/object", unique_prefix(name))
}

async fn put(client: &Client, target: &S3Target, key: &str, body: &[u8]) -> Result<()> {
    client
        .put_object()
        .bucket(&target.bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await?;
    Ok(())
}

async fn get(client: &Client, target: &S3Target, key: &str) -> Result<Vec<u8>> {
    let object = client
        .get_object()
        .bucket(&target.bucket)
        .key(key)
        .send()
        .await?;
    Ok(object.body.collect().await?.to_vec())
}

async fn exists(client: &Client, target: &S3Target, key: &str) -> Result<bool> {
    match client
        .head_object()
        .bucket(&target.bucket)
        .key(key)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn stats(matched: u64, injected: u64) -> RuleStats {
    RuleStats { matched, injected }
}

#[tokio::test]
async fn a_503_slow_down_is_answered_by_the_proxy_and_a_retry_gets_through() -> Result<()> {
    let moto = moto()?;
    let proxy = FaultProxy::start(&moto)?;
    let target = proxy.target();
    let key = key("slowdown");
    let rule = proxy.add(
        Rule::new()
            .method("PUT")
            .query_contains("x-id=PutObject")
            .first(1)
            .respond(503, SLOW_DOWN_XML),
    );

    // One attempt: the client gets S3's SlowDown, moto never saw the PUT.
    let err = client(&target, 1)
        .put_object()
        .bucket(&target.bucket)
        .key(&key)
        .body(ByteStream::from_static(b"payload"))
        .send()
        .await
        .expect_err("the proxy answered 503");
    assert_eq!(err.code(), Some("SlowDown"), "{err:?}");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert!(!exists(&client(&moto, 1), &moto, &key).await?);
    assert_eq!(proxy.stats(rule), stats(1, 1));

    // The rule picked only the first: the next PUT goes through.
    put(&client(&target, 1), &target, &key, b"payload").await?;
    assert_eq!(get(&client(&moto, 1), &moto, &key).await?, b"payload");
    assert_eq!(proxy.stats(rule), stats(2, 1));
    let totals = proxy.totals();
    assert_eq!(
        (totals.requests, totals.answered, totals.forwarded),
        (2, 1, 1)
    );
    Ok(())
}

#[tokio::test]
async fn every_2nd_upload_part_fails_with_500_and_the_retries_complete_the_upload() -> Result<()> {
    let moto = moto()?;
    let proxy = FaultProxy::start(&moto)?;
    let target = proxy.target();
    let key = key("every-2nd-part");
    let parts_rule = proxy.add(
        Rule::new()
            .method("PUT")
            .query_contains("partNumber=")
            .every(2)
            .respond(500, INTERNAL_ERROR_XML),
    );
    // Counts only: the multipart upload's other requests are not touched.
    let posts = proxy.add(Rule::new().method("POST").path_ends_with("/object"));

    let client = client(&target, 3);
    let upload = client
        .create_multipart_upload()
        .bucket(&target.bucket)
        .key(&key)
        .send()
        .await?;
    let upload_id = upload.upload_id().context("no upload id")?;
    let parts = [data(PART, 1), data(PART, 2), data(1000, 3)];
    let mut completed = Vec::new();
    for (number, part) in (1..).zip(&parts) {
        let output = client
            .upload_part()
            .bucket(&target.bucket)
            .key(&key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(part.clone()))
            .send()
            .await?;
        completed.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(output.e_tag().map(str::to_string))
                .set_checksum_crc32(output.checksum_crc32().map(str::to_string))
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(&target.bucket)
        .key(&key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await?;

    // Part 1 passed; part 2 failed then passed; part 3 failed then passed.
    assert_eq!(proxy.stats(parts_rule), stats(5, 2));
    assert_eq!(proxy.stats(posts), stats(2, 0));
    let part_requests: Vec<bool> = proxy
        .seen()
        .iter()
        .filter(|seen| seen.target.contains("partNumber="))
        .map(|seen| seen.rules.contains(&parts_rule))
        .collect();
    assert_eq!(part_requests, [false, true, false, true, false]);
    assert_eq!(
        get(&self::client(&moto, 1), &moto, &key).await?,
        parts.concat()
    );
    let totals = proxy.totals();
    assert_eq!(
        (totals.requests, totals.answered, totals.forwarded),
        (7, 2, 5)
    );
    Ok(())
}

#[tokio::test]
async fn a_download_reset_after_k_bytes_fails_and_the_next_one_succeeds() -> Result<()> {
    let moto = moto()?;
    let key = key("download-reset");
    let body = data(256 * 1024, 4);
    put(&client(&moto, 1), &moto, &key, &body).await?;
    let proxy = FaultProxy::start(&moto)?;
    let target = proxy.target();
    let cut = proxy.add(
        Rule::new()
            .method("GET")
            .path_ends_with("/object")
            .nth(1)
            .reset_response_after(64 * 1024),
    );

    // The response head arrives, then the body breaks off: the SDK has
    // already returned the output, so reading the body fails.
    let object = client(&target, 1)
        .get_object()
        .bucket(&target.bucket)
        .key(&key)
        .send()
        .await?;
    let err = object
        .body
        .collect()
        .await
        .expect_err("the download was reset");
    // An RST: not the "IncompleteBody" of a connection closed early.
    let text = format!("{err:?}");
    assert!(text.contains("ConnectionReset"), "{text}");
    assert_eq!(proxy.stats(cut), stats(1, 1));
    assert_eq!(proxy.totals().resets, 1);

    assert_eq!(get(&client(&target, 1), &target, &key).await?, body);
    assert_eq!(proxy.stats(cut), stats(2, 1));
    let totals = proxy.totals();
    assert_eq!(
        (totals.forwarded, totals.responses, totals.resets),
        (2, 1, 1)
    );
    Ok(())
}

#[tokio::test]
async fn an_upload_reset_mid_body_is_retried_by_the_sdk() -> Result<()> {
    let moto = moto()?;
    let proxy = FaultProxy::start(&moto)?;
    let target = proxy.target();
    let key = key("upload-reset");
    let body = data(1024 * 1024, 5);
    let cut = proxy.add(
        Rule::new()
            .method("PUT")
            .nth(1)
            .reset_request_after(100 * 1024),
    );

    // Without retries the client sees the reset, and moto stored nothing.
    let err = client(&target, 1)
        .put_object()
        .bucket(&target.bucket)
        .key(&key)
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect_err("the upload was reset");
    assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");
    assert!(!exists(&client(&moto, 1), &moto, &key).await?);
    assert_eq!(proxy.stats(cut), stats(1, 1));
    let totals = proxy.totals();
    assert_eq!((totals.forwarded, totals.resets), (0, 1));

    // Cut the next one too: the SDK's second attempt gets through.
    let again = proxy.add(
        Rule::new()
            .method("PUT")
            .nth(1)
            .reset_request_after(100 * 1024),
    );
    put(&client(&target, 2), &target, &key, &body).await?;
    assert_eq!(get(&client(&moto, 1), &moto, &key).await?, body);
    assert_eq!(proxy.stats(again), stats(2, 1));
    assert_eq!(proxy.stats(cut), stats(3, 1));
    let totals = proxy.totals();
    assert_eq!((totals.forwarded, totals.resets), (1, 2));
    Ok(())
}

#[tokio::test]
async fn a_reset_on_arrival_never_reaches_moto() -> Result<()> {
    let moto = moto()?;
    let key = key("delete-reset");
    put(&client(&moto, 1), &moto, &key, b"keep me").await?;
    let proxy = FaultProxy::start(&moto)?;
    let target = proxy.target();
    let reset = proxy.add(Rule::new().method("DELETE").first(1).reset());

    let err = client(&target, 1)
        .delete_object()
        .bucket(&target.bucket)
        .key(&key)
        .send()
        .await
        .expect_err("the delete was reset");
    assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");
    assert!(exists(&client(&moto, 1), &moto, &key).await?);
    assert_eq!(proxy.stats(reset), stats(1, 1));

    // With retries the delete goes through on the second attempt.
    client(&target, 2)
        .delete_object()
        .bucket(&target.bucket)
        .key(&key)
        .send()
        .await?;
    assert!(!exists(&client(&moto, 1), &moto, &key).await?);
    assert_eq!(proxy.stats(reset), stats(2, 1));
    assert_eq!(
        proxy.totals(),
        ProxyTotals {
            connections: 2,
            requests: 2,
            forwarded: 1,
            responses: 1,
            answered: 0,
            resets: 1,
            upstream_errors: 0,
        }
    );
    Ok(())
}

#[tokio::test]
async fn a_stall_holds_a_request_and_a_stall_forever_lasts_until_cleared() -> Result<()> {
    let moto = moto()?;
    let key = key("stall");
    put(&client(&moto, 1), &moto, &key, b"held").await?;
    let proxy = FaultProxy::start(&moto)?;
    let target = proxy.target();

    let stall = Duration::from_millis(700);
    let timed = proxy.add(Rule::new().method("GET").nth(1).stall(stall));
    let started = Instant::now();
    assert_eq!(get(&client(&target, 1), &target, &key).await?, b"held");
    assert!(started.elapsed() >= stall, "took {:?}", started.elapsed());
    assert_eq!(proxy.stats(timed), stats(1, 1));
    proxy.clear(timed);

    // Held until cleared: nothing reaches moto meanwhile.
    let forever = proxy.add(Rule::new().method("GET").first(1).stall_forever());
    let held = tokio::spawn({
        let (client, target, key) = (client(&target, 1), target.clone(), key.clone());
        async move { get(&client, &target, &key).await }
    });
    let until = Instant::now() + Duration::from_secs(10);
    while proxy.stats(forever).injected == 0 {
        ensure!(Instant::now() < until, "the GET never reached the proxy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished());
    assert_eq!(proxy.totals().forwarded, 1);
    proxy.clear(forever);
    assert_eq!(held.await??, b"held");
    assert_eq!(proxy.totals().forwarded, 2);

    // A client that gives up on a held request sees a timeout.
    let forever = proxy.add(Rule::new().method("GET").stall_forever());
    let impatient = aws_sdk_s3::Config::builder().timeout_config(
        TimeoutConfig::builder()
            .operation_attempt_timeout(Duration::from_millis(300))
            .build(),
    );
    let err = client(&target, 1)
        .get_object()
        .bucket(&target.bucket)
        .key(&key)
        .customize()
        .config_override(impatient)
        .send()
        .await
        .expect_err("the GET is held");
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    assert_eq!(proxy.stats(forever), stats(1, 1));
    assert_eq!(proxy.totals().forwarded, 2);
    Ok(())
}

#[tokio::test]
async fn a_throttle_bounds_the_rate_both_ways_and_lifts_when_cleared() -> Result<()> {
    let moto = moto()?;
    let proxy = FaultProxy::start(&moto)?;
    let target = proxy.target();
    let key = key("throttle");
    let body = data(200 * 1024, 6);

    // 200 KiB at 400 KiB/s: half a second, less the last piece's pause.
    let rate = 400 * 1024;
    let throttle = proxy.add(Rule::new().throttle(rate));
    let started = Instant::now();
    put(&client(&target, 1), &target, &key, &body).await?;
    let upload = started.elapsed();
    let started = Instant::now();
    assert_eq!(get(&client(&target, 1), &target, &key).await?, body);
    let download = started.elapsed();
    for took in [upload, download] {
        assert!(took >= Duration::from_millis(450), "took {took:?}");
    }
    assert_eq!(proxy.stats(throttle), stats(2, 2));
    proxy.clear(throttle);

    // 8 KiB/s would take 25 s; clearing the rule mid-download lifts it.
    let slow = proxy.add(Rule::new().method("GET").throttle(8 * 1024));
    let started = Instant::now();
    let download = tokio::spawn({
        let (client, target, key) = (client(&target, 1), target.clone(), key.clone());
        async move { get(&client, &target, &key).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!download.is_finished());
    proxy.clear(slow);
    assert_eq!(download.await??, body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.stats(slow), stats(1, 1));
    Ok(())
}

#[tokio::test]
async fn refused_connections_fail_fast_and_the_same_endpoint_comes_back() -> Result<()> {
    let moto = moto()?;
    let key = key("refuse");
    put(&client(&moto, 1), &moto, &key, b"back").await?;
    let proxy = FaultProxy::start(&moto)?;
    let target = proxy.target();
    assert_eq!(get(&client(&target, 1), &target, &key).await?, b"back");

    proxy.refuse_connections(true)?;
    let hostport = target.endpoint.trim_start_matches("http://");
    let refused = std::net::TcpStream::connect(hostport).expect_err("the proxy refuses");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let started = Instant::now();
    let err = client(&target, 2)
        .get_object()
        .bucket(&target.bucket)
        .key(&key)
        .send()
        .await
        .expect_err("the proxy refuses");
    assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(proxy.totals().connections, 1);

    proxy.refuse_connections(false)?;
    assert_eq!(get(&client(&target, 1), &target, &key).await?, b"back");
    let totals = proxy.totals();
    assert_eq!((totals.connections, totals.requests), (2, 2));
    Ok(())
}

#[tokio::test]
async fn garage_status_and_reset_faults() -> Result<()> {
    let garage = garage()?;
    let proxy = FaultProxy::start(&garage)?;
    let target = proxy.target();
    let key = key("garage");
    let body = data(512 * 1024, 7);

    // 503 SlowDown on the first PutObject, then the retry stores it.
    let slow_down = proxy.add(
        Rule::new()
            .method("PUT")
            .query_contains("x-id=PutObject")
            .nth(1)
            .respond(503, SLOW_DOWN_XML),
    );
    put(&client(&target, 2), &target, &key, &body).await?;
    assert_eq!(proxy.stats(slow_down), stats(2, 1));
    // Garage keeps connections alive: the answer left the connection
    // usable, and the retry went on it.
    assert_eq!(proxy.totals().connections, 1);

    // 500 on every GET: the client gives up with InternalError.
    let internal = proxy.add(Rule::new().method("GET").respond(500, INTERNAL_ERROR_XML));
    let err = client(&target, 2)
        .get_object()
        .bucket(&target.bucket)
        .key(&key)
        .send()
        .await
        .expect_err("every GET fails");
    assert_eq!(err.code(), Some("InternalError"), "{err:?}");
    assert_eq!(proxy.stats(internal), stats(2, 2));
    proxy.clear(internal);

    // A download cut after 1000 bytes of body; the next one is whole.
    let cut = proxy.add(Rule::new().method("GET").nth(1).reset_response_after(1000));
    let object = client(&target, 1)
        .get_object()
        .bucket(&target.bucket)
        .key(&key)
        .send()
        .await?;
    object
        .body
        .collect()
        .await
        .expect_err("the download was reset");
    assert_eq!(get(&client(&target, 1), &target, &key).await?, body);
    assert_eq!(proxy.stats(cut), stats(2, 1));

    // An upload cut after 64 KiB of body; the SDK retries on a new
    // connection and Garage stores the whole object.
    let second = format!("{key}-2");
    let cut_upload = proxy.add(
        Rule::new()
            .method("PUT")
            .nth(1)
            .reset_request_after(64 * 1024),
    );
    put(&client(&target, 2), &target, &second, &body).await?;
    assert_eq!(get(&client(&garage, 1), &garage, &second).await?, body);
    assert_eq!(proxy.stats(cut_upload), stats(2, 1));

    // An immediate reset of a HEAD, retried.
    let reset = proxy.add(Rule::new().method("HEAD").first(1).reset());
    assert!(exists(&client(&target, 2), &target, &second).await?);
    assert_eq!(proxy.stats(reset), stats(2, 1));

    let totals = proxy.totals();
    assert_eq!(totals.resets, 3);
    assert_eq!(totals.answered, 3);
    assert_eq!(totals.upstream_errors, 0);
    assert_eq!(totals.requests, totals.answered + totals.forwarded + 2);
    Ok(())
}
