//! The HTTP API over a real socket with a plain HTTP client: auth, names and paths, unknown
//! things, uploads (monolithic, chunked, mount, broken off, concurrent).

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::api::{Api, code, header, raw_get, raw_request, refused};
use support::{TestRegistry, random_hex, sha256};

#[tokio::test]
async fn every_request_needs_the_credentials_and_gets_a_basic_challenge() {
    let registry = TestRegistry::start("auth").await;
    let http = reqwest::Client::new();
    for path in ["/v2/", "/v2/a/tags/list", "/v2/NOT_A_NAME/manifests/x"] {
        let response = http.get(registry.url(path)).send().await.unwrap();
        assert_eq!(header(&response, "www-authenticate"), r#"Basic realm="enclii""#);
        assert_eq!(header(&response, "docker-distribution-api-version"), "registry/2.0");
        let message = refused(response, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        assert!(message.contains("docker login"), "{message}");
    }
    let wrong = http
        .get(registry.url("/v2/"))
        .basic_auth(registry.user(), Some("not-the-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&wrong, "www-authenticate"), r#"Basic realm="enclii""#);
    assert_eq!(code(wrong).await.0, StatusCode::UNAUTHORIZED);
    let bearer = http.get(registry.url("/v2/")).bearer_auth("x").send().await.unwrap();
    assert_eq!(bearer.status(), StatusCode::UNAUTHORIZED);

    let ok = Api::new(&registry).send(Method::GET, "/v2/").await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(header(&ok, "docker-distribution-api-version"), "registry/2.0");
    assert!(!format!("{:?}", registry.credentials).contains(registry.password()));
}

#[tokio::test]
async fn bad_names_tags_digests_and_paths_are_refused_with_their_codes() {
    let registry = TestRegistry::start("names").await;
    let api = Api::new(&registry);
    let zeros = "0".repeat(64);
    let (bad, missing) = (StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND);
    let cases = [
        (Method::GET, "/v2/Upper/manifests/latest", bad, "NAME_INVALID"),
        (Method::GET, "/v2/a__-b/tags/list", bad, "NAME_INVALID"),
        (Method::GET, "/v2/a/manifests/.hidden", bad, "TAG_INVALID"),
        (
            Method::GET,
            &format!("/v2/a/manifests/{}", "t".repeat(129)),
            bad,
            "TAG_INVALID",
        ),
        (
            Method::GET,
            &format!("/v2/a/blobs/sha512:{zeros}"),
            bad,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            &format!("/v2/a/blobs/sha256:{}", "A".repeat(64)),
            bad,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/blobs/uploads/not-an-id",
            missing,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (Method::GET, "/v2/a/elsewhere", missing, "UNSUPPORTED"),
        (
            Method::PATCH,
            "/v2/a/tags/list",
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
    ];
    for (method, path, status, expected) in cases {
        let message = api.refused(method, path, status, expected).await;
        if expected == "DIGEST_INVALID" {
            assert!(message.contains("only sha256"), "{message}");
        }
    }

    // Traversal: sent raw, as HTTP clients would normalise `..` away.
    for path in [
        "/v2/a/../../../etc/manifests/passwd",
        "/v2/a/%2e%2e/x/manifests/latest",
        "/v2/a/blobs/..%2f..%2fx",
    ] {
        let status = raw_get(&registry, path).await;
        assert!(
            status.starts_with("HTTP/1.1 400") || status.starts_with("HTTP/1.1 404"),
            "{path}: {status}"
        );
    }
    assert!(
        registry
            .files("")
            .iter()
            .all(|f| ["blobs", "repositories", "tmp", "uploads"].contains(&f.as_str()))
    );
}

#[tokio::test]
async fn unknown_things_are_reported_as_unknown() {
    let registry = TestRegistry::start("unknown").await;
    let api = Api::new(&registry);
    let digest = format!("sha256:{}", "1".repeat(64));
    let id = "f".repeat(32);
    for (path, expected) in [
        (format!("/v2/a/blobs/{digest}"), "BLOB_UNKNOWN"),
        ("/v2/a/manifests/latest".to_owned(), "MANIFEST_UNKNOWN"),
        (format!("/v2/a/manifests/{digest}"), "MANIFEST_UNKNOWN"),
        ("/v2/a/tags/list".to_owned(), "NAME_UNKNOWN"),
        (format!("/v2/a/blobs/uploads/{id}"), "BLOB_UPLOAD_UNKNOWN"),
    ] {
        api.refused(Method::GET, &path, StatusCode::NOT_FOUND, expected).await;
    }
    let head = api.send(Method::HEAD, &format!("/v2/a/blobs/{digest}")).await;
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    // A referrers list of an unknown subject is empty, not an error.
    let referrers = api.referrers("a", &digest).await;
    assert_eq!(referrers["manifests"], json!([]));
}

#[tokio::test]
async fn chunked_uploads_follow_ranges_and_verify_the_digest() {
    let registry = TestRegistry::start("chunked").await;
    let api = Api::new(&registry);
    let data = random_hex(500).into_bytes();
    let digest = sha256(&data);

    let start = api.start_upload("p/s").await;
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&start, "range"), "0-0");
    let location = header(&start, "location");
    let id = header(&start, "docker-upload-uuid");
    assert_eq!(location, format!("/v2/p/s/blobs/uploads/{id}"));

    let first = api.patch(&location, Some("0-599"), &data[..600]).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&first, "range"), "0-599");
    // A chunk at the wrong offset: 416, and where to resume.
    let wrong = api.patch(&location, Some("500-599"), &data[500..600]).await;
    assert_eq!(wrong.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&wrong, "range"), "0-599");
    let status = api.send(Method::GET, &location).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range"), "0-599");
    // The rest without Content-Range (as docker sends), the end with the PUT.
    let second = api.patch(&location, None, &data[600..900]).await;
    assert_eq!(header(&second, "range"), "0-899");
    let done = api
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .body(data[900..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::CREATED);
    assert_eq!(header(&done, "docker-content-digest"), digest);
    assert_eq!(header(&done, "location"), format!("/v2/p/s/blobs/{digest}"));

    let got = api.send(Method::GET, &format!("/v2/p/s/blobs/{digest}")).await;
    assert_eq!(header(&got, "docker-content-digest"), digest);
    assert_eq!(got.bytes().await.unwrap(), data);
    let head = api.send(Method::HEAD, &format!("/v2/other/blobs/{digest}")).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), "1000");
    let part = api
        .request(Method::GET, &format!("/v2/p/s/blobs/{digest}"))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&part, "content-range"), "bytes 10-19/1000");
    assert_eq!(part.bytes().await.unwrap(), data[10..20]);
    // The session is gone.
    api.refused(Method::GET, &location, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN")
        .await;
    assert!(registry.files("uploads").is_empty());
    assert!(registry.files("tmp").is_empty());

    // A wrong digest: 400 DIGEST_INVALID, nothing stored.
    let bad = format!("sha256:{}", "2".repeat(64));
    let response = api
        .request(Method::POST, &format!("/v2/p/s/blobs/uploads/?digest={bad}"))
        .body("not that".as_bytes())
        .send()
        .await
        .unwrap();
    refused(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert!(!registry.files("blobs/sha256").contains(&"2".repeat(64)));
    assert!(registry.files("uploads").is_empty());

    // A session of one repository is unknown to another; a cancelled one is gone.
    let other = header(&api.start_upload("p/s").await, "docker-upload-uuid");
    let elsewhere = format!("/v2/elsewhere/blobs/uploads/{other}");
    api.refused(Method::GET, &elsewhere, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN")
        .await;
    let cancel = api
        .send(Method::DELETE, &format!("/v2/p/s/blobs/uploads/{other}"))
        .await;
    assert_eq!(cancel.status(), StatusCode::NO_CONTENT);
    assert!(registry.files("uploads").is_empty());
}

#[tokio::test]
async fn a_stored_blob_mounts_into_any_repository() {
    let registry = TestRegistry::start("mount").await;
    let api = Api::new(&registry);
    let digest = api.blob("from/repo", b"shared layer").await;
    let mount = |digest: &str| format!("/v2/to/repo/blobs/uploads/?mount={digest}&from=from/repo");
    let mounted = api.send(Method::POST, &mount(&digest)).await;
    assert_eq!(mounted.status(), StatusCode::CREATED);
    assert_eq!(header(&mounted, "location"), format!("/v2/to/repo/blobs/{digest}"));
    let missing = format!("sha256:{}", "3".repeat(64));
    let session = api.send(Method::POST, &mount(&missing)).await;
    assert_eq!(session.status(), StatusCode::ACCEPTED);
    assert!(!header(&session, "docker-upload-uuid").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_the_same_blob_all_succeed() {
    let registry = TestRegistry::start("concurrent").await;
    let data = random_hex(512 * 1024).into_bytes();
    let digest = sha256(&data);
    let uploads = (0..8).map(|i| {
        let api = Api::new(&registry);
        let data = data.clone();
        let digest = digest.clone();
        async move {
            let name = format!("repo{}", i % 2);
            let location = header(&api.start_upload(&name).await, "location");
            for (n, chunk) in data.chunks(100_000).enumerate() {
                let from = n * 100_000;
                let range = format!("{from}-{}", from + chunk.len() - 1);
                let patch = api.patch(&location, Some(&range), chunk).await;
                assert_eq!(patch.status(), StatusCode::ACCEPTED);
            }
            let done = api.send(Method::PUT, &format!("{location}?digest={digest}")).await;
            assert_eq!(done.status(), StatusCode::CREATED, "{}", done.text().await.unwrap());
        }
    });
    futures::future::join_all(uploads).await;
    let api = Api::new(&registry);
    let got = api.send(Method::GET, &format!("/v2/repo0/blobs/{digest}")).await;
    assert_eq!(sha256(&got.bytes().await.unwrap()), digest);
    assert_eq!(
        registry.files("blobs/sha256"),
        vec![digest["sha256:".len()..].to_owned()]
    );
    assert!(registry.files("uploads").is_empty());
}

#[tokio::test]
async fn a_chunk_that_breaks_off_is_cut_back_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let registry = TestRegistry::start("broken").await;
    let api = Api::new(&registry);
    let data = random_hex(100).into_bytes();
    let location = header(&api.start_upload("p").await, "location");
    let first = api.patch(&location, None, &data[..100]).await;
    assert_eq!(header(&first, "range"), "0-99");

    // 1000 bytes announced, 50 sent, then the client goes away.
    let mut stream = raw_request(&registry, "PATCH", &location, &["Content-Length: 1000"]).await;
    stream.write_all(&data[100..150]).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut ignored = Vec::new();
    let _ = stream.read_to_end(&mut ignored).await;

    let status = api.send(Method::GET, &location).await;
    assert_eq!(header(&status, "range"), "0-99", "the broken chunk was kept");
    let done = api
        .request(Method::PUT, &format!("{location}?digest={}", sha256(&data)))
        .body(data[100..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::CREATED, "{}", done.text().await.unwrap());
}
