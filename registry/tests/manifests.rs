//! Manifests, tags, referrers and garbage collection over HTTP with a plain client.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::api::{Api, OCI_INDEX, OCI_MANIFEST, header, refused};
use support::{TestRegistry, age, sha256};

#[tokio::test]
async fn manifests_are_checked_stored_listed_and_deleted() {
    let registry = TestRegistry::start("manifests").await;
    let api = Api::new(&registry);
    let manifest = api.image("project/service").await;

    // A manifest naming a blob the registry does not have.
    let mut dangling = manifest.clone();
    dangling["layers"][0]["digest"] = json!(format!("sha256:{}", "4".repeat(64)));
    let bad = StatusCode::BAD_REQUEST;
    refused(
        api.manifest("project/service", "v0", &dangling).await,
        bad,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
    let not_json = api
        .put_manifest("project/service", "v0", OCI_MANIFEST, "{not json")
        .await;
    refused(not_json, bad, "MANIFEST_INVALID").await;
    let oversized = vec![b' '; 4 * 1024 * 1024 + 1];
    let oversized = api
        .put_manifest("project/service", "big", OCI_MANIFEST, oversized)
        .await;
    let message = refused(oversized, StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID").await;
    assert!(message.contains("4 MiB"), "{message}");

    let body = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256(&body);
    let wrong_digest = format!("sha256:{}", "5".repeat(64));
    let misnamed = api.manifest("project/service", &wrong_digest, &manifest).await;
    refused(misnamed, bad, "DIGEST_INVALID").await;

    let pushed = api.manifest("project/service", "v1", &manifest).await;
    assert_eq!(pushed.status(), StatusCode::CREATED);
    assert_eq!(header(&pushed, "docker-content-digest"), digest);
    assert_eq!(
        header(&pushed, "location"),
        format!("/v2/project/service/manifests/{digest}")
    );
    for tag in ["v2", "latest"] {
        assert_eq!(
            api.manifest("project/service", tag, &manifest).await.status(),
            StatusCode::CREATED
        );
    }
    for reference in ["v1", digest.as_str()] {
        let path = format!("/v2/project/service/manifests/{reference}");
        let got = api.send(Method::GET, &path).await;
        assert_eq!(header(&got, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&got, "docker-content-digest"), digest);
        assert_eq!(got.bytes().await.unwrap(), body);
        let head = api.send(Method::HEAD, &path).await;
        assert_eq!(header(&head, "content-length"), body.len().to_string());
    }
    // Not visible from another repository, though the blob is global.
    let elsewhere = api.send(Method::GET, &format!("/v2/other/manifests/{digest}")).await;
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);

    // An index must name manifests the repository has.
    let index = |child: &str| {
        json!({ "schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": [{ "mediaType": OCI_MANIFEST, "digest": child, "size": body.len() }] })
    };
    let put_index = |child: &str| {
        let index = serde_json::to_vec(&index(child)).unwrap();
        api.put_manifest("project/service", "multi", OCI_INDEX, index)
    };
    refused(put_index(&wrong_digest).await, bad, "MANIFEST_BLOB_UNKNOWN").await;
    assert_eq!(put_index(&digest).await.status(), StatusCode::CREATED);

    // Tags, paginated.
    let list = api.tags("project/service").await;
    assert_eq!(
        list,
        json!({ "name": "project/service", "tags": ["latest", "multi", "v1", "v2"] })
    );
    let page = api.send(Method::GET, "/v2/project/service/tags/list?n=2").await;
    assert_eq!(
        header(&page, "link"),
        "</v2/project/service/tags/list?n=2&last=multi>; rel=\"next\""
    );
    assert_eq!(page.json::<Value>().await.unwrap()["tags"], json!(["latest", "multi"]));
    let page = api.json("/v2/project/service/tags/list?n=2&last=multi").await;
    assert_eq!(page["tags"], json!(["v1", "v2"]));
    let path = "/v2/project/service/tags/list?n=x";
    api.refused(Method::GET, path, bad, "PAGINATION_NUMBER_INVALID").await;

    // Untag, then delete by digest: every tag pointing at it goes.
    for reference in ["v2", digest.as_str()] {
        let path = format!("/v2/project/service/manifests/{reference}");
        assert_eq!(api.send(Method::DELETE, &path).await.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(api.tags("project/service").await["tags"], json!(["multi"]));
    let path = "/v2/project/service/manifests/v1";
    api.refused(Method::GET, path, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
        .await;
}

#[tokio::test]
async fn referrers_list_the_manifests_naming_a_subject() {
    let registry = TestRegistry::start("referrers").await;
    let api = Api::new(&registry);
    let (image, subject) = api.push_image("app", "v1").await;

    let empty = api.blob("app", b"{}").await;
    let sbom = api.blob("app", br#"{"bomFormat":"CycloneDX"}"#).await;
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.cyclonedx+json",
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2 },
        "layers": [{ "mediaType": "application/vnd.cyclonedx+json", "digest": sbom, "size": 25 }],
        "subject": { "mediaType": OCI_MANIFEST, "digest": subject, "size": serde_json::to_vec(&image).unwrap().len() },
        "annotations": { "org.opencontainers.image.created": "2026-01-01T00:00:00Z" },
    });
    let artifact_digest = sha256(&serde_json::to_vec(&artifact).unwrap());
    let pushed = api.manifest("app", &artifact_digest, &artifact).await;
    assert_eq!(pushed.status(), StatusCode::CREATED);
    assert_eq!(header(&pushed, "oci-subject"), subject);

    let listed = api.send(Method::GET, &format!("/v2/app/referrers/{subject}")).await;
    assert_eq!(header(&listed, "content-type"), OCI_INDEX);
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed["mediaType"], OCI_INDEX);
    assert_eq!(
        listed["manifests"],
        json!([{
            "mediaType": OCI_MANIFEST,
            "digest": artifact_digest,
            "size": serde_json::to_vec(&artifact).unwrap().len(),
            "artifactType": "application/vnd.cyclonedx+json",
            "annotations": { "org.opencontainers.image.created": "2026-01-01T00:00:00Z" },
        }])
    );
    let filtered = api
        .send(
            Method::GET,
            &format!("/v2/app/referrers/{subject}?artifactType=application/vnd.cyclonedx%2Bjson"),
        )
        .await;
    assert_eq!(header(&filtered, "oci-filters-applied"), "artifactType");
    assert_eq!(
        filtered.json::<Value>().await.unwrap()["manifests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let other = api
        .json(&format!("/v2/app/referrers/{subject}?artifactType=text/plain"))
        .await;
    assert_eq!(other["manifests"], json!([]));

    registry
        .registry
        .delete_manifest("app", &artifact_digest)
        .await
        .unwrap();
    let after = api.referrers("app", &subject).await;
    assert_eq!(after["manifests"], json!([]));
}

#[tokio::test]
async fn garbage_collection_removes_orphans_and_keeps_what_is_referenced_or_recent() {
    let registry = TestRegistry::start("gc").await;
    let api = Api::new(&registry);
    let (manifest, manifest_digest) = api.push_image("kept", "v1").await;
    let orphan = api.blob("kept", b"nobody references me").await;
    let young_orphan = api.blob("kept", b"pushed a moment ago").await;
    let stale_id = header(&api.start_upload("kept").await, "docker-upload-uuid");
    let fresh_id = header(&api.start_upload("kept").await, "docker-upload-uuid");

    let hour = Duration::from_secs(2 * 3600);
    for blob in registry.files("blobs/sha256") {
        if young_orphan != format!("sha256:{blob}") {
            age(&registry.root.join("blobs/sha256").join(blob), hour);
        }
    }
    age(&registry.root.join("uploads").join(&stale_id).join("data"), hour);

    // A referenced blob still cannot be deleted by hand; an unreferenced one can.
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let path = format!("/v2/kept/blobs/{layer}");
    api.refused(Method::DELETE, &path, StatusCode::FORBIDDEN, "DENIED")
        .await;

    let report = registry.registry.collect_garbage().await.unwrap();
    assert_eq!(report.blobs_removed, 1, "{report:?}");
    assert_eq!(report.bytes_freed, 20);
    assert_eq!(
        report.blobs_kept, 4,
        "config, layer, manifest, young orphan: {report:?}"
    );
    assert_eq!(report.uploads_removed, 1);
    for (digest, status) in [(&orphan, StatusCode::NOT_FOUND), (&layer, StatusCode::OK)] {
        let head = api.send(Method::HEAD, &format!("/v2/kept/blobs/{digest}")).await;
        assert_eq!(head.status(), status, "{digest}");
    }
    assert_eq!(registry.files("uploads"), vec![fresh_id]);
    let pulled = api.send(Method::GET, "/v2/kept/manifests/v1").await;
    assert_eq!(pulled.status(), StatusCode::OK);

    // Once the manifest is deleted, its blobs go too (after their grace period).
    registry
        .registry
        .delete_manifest("kept", &manifest_digest)
        .await
        .unwrap();
    for blob in registry.files("blobs/sha256") {
        age(&registry.root.join("blobs/sha256").join(blob), hour);
    }
    let report = registry.registry.collect_garbage().await.unwrap();
    assert_eq!((report.blobs_removed, report.blobs_kept), (4, 0), "{report:?}");
    assert!(registry.files("blobs/sha256").is_empty());
    assert_eq!(
        registry
            .registry
            .delete_manifest("kept", &manifest_digest)
            .await
            .unwrap_err()
            .code(),
        Some(enclii_registry::ErrorCode::ManifestUnknown)
    );
}

#[tokio::test]
async fn garbage_collection_spares_an_old_blob_a_push_is_about_to_reference() {
    let registry = TestRegistry::start("gc-race").await;
    let api = Api::new(&registry);
    let manifest = api.image("racing").await;
    for blob in registry.files("blobs/sha256") {
        age(
            &registry.root.join("blobs/sha256").join(blob),
            Duration::from_secs(2 * 3600),
        );
    }
    // What docker does before pushing a manifest over layers it finds present: HEAD them.
    for digest in [&manifest["config"]["digest"], &manifest["layers"][0]["digest"]] {
        let head = api
            .send(Method::HEAD, &format!("/v2/racing/blobs/{}", digest.as_str().unwrap()))
            .await;
        assert_eq!(head.status(), StatusCode::OK);
    }
    let report = registry.registry.collect_garbage().await.unwrap();
    assert_eq!((report.blobs_removed, report.blobs_kept), (0, 2), "{report:?}");
    assert_eq!(
        api.manifest("racing", "v1", &manifest).await.status(),
        StatusCode::CREATED
    );
}
