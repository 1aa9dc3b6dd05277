//! Manifests, tags, referrers and garbage collection over HTTP with a plain client.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::api::{Api, OCI_INDEX, OCI_MANIFEST, code, header};
use support::{TestRegistry, age, sha256};

#[tokio::test]
async fn manifests_are_checked_stored_listed_and_deleted() {
    let registry = TestRegistry::start("manifests").await;
    let api = Api::new(&registry);
    let manifest = api.image("project/service").await;

    // A manifest naming a blob the registry does not have.
    let mut dangling = manifest.clone();
    dangling["layers"][0]["digest"] = json!(format!("sha256:{}", "4".repeat(64)));
    let (status, code_, message) = code(api.manifest("project/service", "v0", &dangling).await).await;
    assert_eq!(
        (status, code_.as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
        "{message}"
    );
    let (_, code_, _) = code(
        api.request(Method::PUT, "/v2/project/service/manifests/v0")
            .header("Content-Type", OCI_MANIFEST)
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code_, "MANIFEST_INVALID");
    let oversized = vec![b' '; 4 * 1024 * 1024 + 1];
    let response = api
        .request(Method::PUT, "/v2/project/service/manifests/big")
        .header("Content-Type", OCI_MANIFEST)
        .body(oversized)
        .send()
        .await
        .unwrap();
    let (status, code_, message) = code(response).await;
    assert_eq!(
        (status, code_.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID")
    );
    assert!(message.contains("4 MiB"), "{message}");

    let body = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256(&body);
    let wrong_digest = format!("sha256:{}", "5".repeat(64));
    let (_, code_, _) = code(api.manifest("project/service", &wrong_digest, &manifest).await).await;
    assert_eq!(code_, "DIGEST_INVALID");

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
        let got = api
            .request(Method::GET, &format!("/v2/project/service/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&got, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&got, "docker-content-digest"), digest);
        assert_eq!(got.bytes().await.unwrap(), body);
        let head = api
            .request(Method::HEAD, &format!("/v2/project/service/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&head, "content-length"), body.len().to_string());
    }
    // Not visible from another repository, though the blob is global.
    let elsewhere = api
        .request(Method::GET, &format!("/v2/other/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);

    // An index must name manifests the repository has.
    let index = |child: &str| {
        json!({ "schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": [{ "mediaType": OCI_MANIFEST, "digest": child, "size": body.len() }] })
    };
    let put_index = |value: Value| {
        api.request(Method::PUT, "/v2/project/service/manifests/multi")
            .header("Content-Type", OCI_INDEX)
            .body(serde_json::to_vec(&value).unwrap())
            .send()
    };
    let (_, code_, _) = code(put_index(index(&wrong_digest)).await.unwrap()).await;
    assert_eq!(code_, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(put_index(index(&digest)).await.unwrap().status(), StatusCode::CREATED);

    // Tags, paginated.
    let list: Value = api
        .request(Method::GET, "/v2/project/service/tags/list")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list,
        json!({ "name": "project/service", "tags": ["latest", "multi", "v1", "v2"] })
    );
    let page = api
        .request(Method::GET, "/v2/project/service/tags/list?n=2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&page, "link"),
        "</v2/project/service/tags/list?n=2&last=multi>; rel=\"next\""
    );
    assert_eq!(page.json::<Value>().await.unwrap()["tags"], json!(["latest", "multi"]));
    let page: Value = api
        .request(Method::GET, "/v2/project/service/tags/list?n=2&last=multi")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["tags"], json!(["v1", "v2"]));
    let (_, code_, _) = code(
        api.request(Method::GET, "/v2/project/service/tags/list?n=x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code_, "PAGINATION_NUMBER_INVALID");

    // Untag, then delete by digest: every tag pointing at it goes.
    let untag = api
        .request(Method::DELETE, "/v2/project/service/manifests/v2")
        .send()
        .await
        .unwrap();
    assert_eq!(untag.status(), StatusCode::ACCEPTED);
    let delete = api
        .request(Method::DELETE, &format!("/v2/project/service/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::ACCEPTED);
    let list: Value = api
        .request(Method::GET, "/v2/project/service/tags/list")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["tags"], json!(["multi"]));
    let gone = api
        .request(Method::GET, "/v2/project/service/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(code(gone).await.1, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn referrers_list_the_manifests_naming_a_subject() {
    let registry = TestRegistry::start("referrers").await;
    let api = Api::new(&registry);
    let image = api.image("app").await;
    let subject = sha256(&serde_json::to_vec(&image).unwrap());
    assert_eq!(api.manifest("app", "v1", &image).await.status(), StatusCode::CREATED);

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

    let listed = api
        .request(Method::GET, &format!("/v2/app/referrers/{subject}"))
        .send()
        .await
        .unwrap();
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
        .request(
            Method::GET,
            &format!("/v2/app/referrers/{subject}?artifactType=application/vnd.cyclonedx%2Bjson"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(header(&filtered, "oci-filters-applied"), "artifactType");
    assert_eq!(
        filtered.json::<Value>().await.unwrap()["manifests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let other: Value = api
        .request(
            Method::GET,
            &format!("/v2/app/referrers/{subject}?artifactType=text/plain"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other["manifests"], json!([]));

    registry
        .registry
        .delete_manifest("app", &artifact_digest)
        .await
        .unwrap();
    let after: Value = api
        .request(Method::GET, &format!("/v2/app/referrers/{subject}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after["manifests"], json!([]));
}
#[tokio::test]
async fn garbage_collection_removes_orphans_and_keeps_what_is_referenced_or_recent() {
    let registry = TestRegistry::start("gc").await;
    let api = Api::new(&registry);
    let manifest = api.image("kept").await;
    let manifest_digest = sha256(&serde_json::to_vec(&manifest).unwrap());
    assert_eq!(
        api.manifest("kept", "v1", &manifest).await.status(),
        StatusCode::CREATED
    );
    let orphan = api.blob("kept", b"nobody references me").await;
    let young_orphan = api.blob("kept", b"pushed a moment ago").await;
    let stale = api
        .request(Method::POST, "/v2/kept/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let stale_id = header(&stale, "docker-upload-uuid");
    let fresh = api
        .request(Method::POST, "/v2/kept/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let fresh_id = header(&fresh, "docker-upload-uuid");

    let hour = Duration::from_secs(2 * 3600);
    for blob in registry.files("blobs/sha256") {
        if young_orphan != format!("sha256:{blob}") {
            age(&registry.root.join("blobs/sha256").join(blob), hour);
        }
    }
    age(&registry.root.join("uploads").join(&stale_id).join("data"), hour);

    // A referenced blob still cannot be deleted by hand; an unreferenced one can.
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let (status, code_, _) = code(
        api.request(Method::DELETE, &format!("/v2/kept/blobs/{layer}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code_.as_str()), (StatusCode::FORBIDDEN, "DENIED"));

    let report = registry.registry.collect_garbage().await.unwrap();
    assert_eq!(report.blobs_removed, 1, "{report:?}");
    assert_eq!(report.bytes_freed, 20);
    assert_eq!(
        report.blobs_kept, 4,
        "config, layer, manifest, young orphan: {report:?}"
    );
    assert_eq!(report.uploads_removed, 1);
    let head = |digest: String| api.request(Method::HEAD, &format!("/v2/kept/blobs/{digest}")).send();
    assert_eq!(head(orphan).await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(head(layer.clone()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(registry.files("uploads"), vec![fresh_id]);
    let pulled = api.request(Method::GET, "/v2/kept/manifests/v1").send().await.unwrap();
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
            .request(Method::HEAD, &format!("/v2/racing/blobs/{}", digest.as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK);
    }
    let report = registry.registry.collect_garbage().await.unwrap();
    assert_eq!((report.blobs_removed, report.blobs_kept), (0, 2), "{report:?}");
    assert_eq!(
        api.manifest("racing", "v1", &manifest).await.status(),
        StatusCode::CREATED
    );
}
