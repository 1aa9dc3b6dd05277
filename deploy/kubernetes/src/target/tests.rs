use enclii_deploy_contract::{LogStream, RuntimeLogLine};
use futures::StreamExt;

use super::jobs::mask;
use super::*;

#[test]
fn metrics_server_cpu_quantities_become_millicores() {
    assert_eq!(cpu_millis("250000000n"), 250.0);
    assert_eq!(cpu_millis("5m"), 5.0);
    assert_eq!(cpu_millis("2"), 2000.0);
    assert_eq!(cpu_millis("1500u"), 1.5);
}

#[test]
fn secret_values_are_masked_in_job_logs() {
    assert_eq!(mask("token=s3cr3t ok".into(), &["s3cr3t".into()]), "token=*** ok");
}

/// Against kube's `tower-test` mock client (no API server runs here): the replicas are the
/// service's track pods, each one's log read with timestamps and split into lines.
#[tokio::test]
async fn mock_runtime_logs_read_each_replica_pod() {
    use http::{Request, Response};
    use kube::client::Body;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let target = KubernetesTarget::new(Client::new(service, "default"), KubernetesConfig::default());
    let server = tokio::spawn(async move {
        let (request, respond) = handle.next_request().await.unwrap();
        assert_eq!(request.uri().path(), "/api/v1/namespaces/enclii-shop-prod/pods");
        let query = request
            .uri()
            .query()
            .unwrap_or_default()
            .replace("%2C", ",")
            .replace("%2F", "/")
            .replace("%3D", "=");
        assert!(query.contains("enclii.dev/service=api,enclii.dev/track"), "{query}");
        let pods = serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [{"metadata": {"name": "api-7d9-x1", "namespace": "enclii-shop-prod"}}]});
        respond.send_response(Response::new(Body::from(serde_json::to_vec(&pods).unwrap())));
        let (request, respond) = handle.next_request().await.unwrap();
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/enclii-shop-prod/pods/api-7d9-x1/log"
        );
        let query = request.uri().query().unwrap_or_default();
        assert!(
            query.contains("tailLines=5") && query.contains("timestamps=true"),
            "{query}"
        );
        let text = "2026-11-29T10:00:00.000000001Z listening on :3000\nno timestamp\n";
        respond.send_response(Response::new(Body::from(text.as_bytes().to_vec())));
    });
    let key = ServiceKey::new("shop", "prod", "api");
    let request = LogRequest { tail: 5, follow: false };
    let lines: Vec<RuntimeLogLine> = target
        .logs(&key, request)
        .await
        .unwrap()
        .map(|l| l.unwrap())
        .collect()
        .await;
    server.await.unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0].replica, "api-7d9-x1");
    assert_eq!(lines[0].line, "listening on :3000");
    assert_eq!(lines[0].stream, LogStream::Combined);
    assert!(lines[0].timestamp.is_some());
    assert_eq!((lines[1].timestamp, lines[1].line.as_str()), (None, "no timestamp"));
}
