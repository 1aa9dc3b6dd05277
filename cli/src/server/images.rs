//! Pruning the embedded registry (issue 15): once an hour the process that serves it deletes the
//! images no release needs any more — with their signatures and SBOMs — then the blobs nothing
//! references. Kept: each service's newest `keep` releases and every release one of its recent
//! deployments ran (so a rollback target stays). An external registry (`ENCLII_REGISTRY`) keeps
//! its own retention; nothing is deleted there.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use enclii_store::{Release, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Deployments per service whose releases are kept, newest first.
const RECENT_DEPLOYMENTS: i64 = 100;
/// Releases per service looked at, newest first (older ones were pruned by earlier passes).
const RELEASES_LOOKED_AT: i64 = 1_000;

/// What pruning needs of a release.
struct ReleaseImage<'a> {
    id: i64,
    image: &'a str,
    digest: Option<&'a str>,
}

impl<'a> From<&'a Release> for ReleaseImage<'a> {
    fn from(r: &'a Release) -> Self {
        ReleaseImage {
            id: r.id,
            image: &r.image,
            digest: r.digest.as_deref(),
        }
    }
}

/// The (repository, digest) pairs of `host`'s registry that no kept release uses. `releases` are
/// one service's, newest first; `deployed` the releases its recent deployments ran.
fn doomed(host: &str, releases: &[ReleaseImage], deployed: &HashSet<i64>, keep: usize) -> BTreeSet<(String, String)> {
    let image = |r: &ReleaseImage| -> Option<(String, String)> {
        let repository = enclii_build::image_name(r.image);
        let name = repository.strip_prefix(host)?.strip_prefix('/')?;
        Some((name.to_string(), r.digest?.to_string()))
    };
    let kept: HashSet<(String, String)> = releases
        .iter()
        .enumerate()
        .filter(|(i, r)| *i < keep || deployed.contains(&r.id))
        .filter_map(|(_, r)| image(r))
        .collect();
    releases
        .iter()
        .skip(keep)
        .filter_map(image)
        .filter(|pair| !kept.contains(pair))
        .collect()
}

/// One pass; returns how many images went.
async fn prune_once(
    registry: &enclii_registry::Registry,
    store: &Store,
    host: &str,
    keep: usize,
) -> anyhow::Result<usize> {
    let mut deleted = 0;
    for project in store.list_projects().await? {
        for service in store.list_services(&project.slug).await? {
            let releases = store
                .list_releases(&project.slug, Some(&service.name), RELEASES_LOOKED_AT)
                .await?;
            let deployments = store
                .list_deployments(&project.slug, Some(&service.name), RECENT_DEPLOYMENTS)
                .await?;
            let deployed: HashSet<i64> = deployments.iter().map(|d| d.release_id).collect();
            let images: Vec<ReleaseImage> = releases.iter().map(ReleaseImage::from).collect();
            for (name, digest) in doomed(host, &images, &deployed, keep) {
                match registry.delete_image(&name, &digest).await {
                    Ok(()) => deleted += 1,
                    Err(e) => warn!(image = %format!("{name}@{digest}"), error = %e, "could not prune an image"),
                }
            }
        }
    }
    let report = registry.collect_garbage().await?;
    if report.blobs_removed > 0 {
        info!(
            blobs = report.blobs_removed,
            bytes = report.bytes_freed,
            "embedded registry: removed unreferenced blobs"
        );
    }
    Ok(deleted)
}

/// Prunes once an hour, until shutdown. A failed pass is logged; the next one tries again.
pub async fn prune(
    registry: enclii_registry::Registry,
    store: Arc<Store>,
    host: String,
    keep: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    const EVERY: Duration = Duration::from_secs(3600);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(EVERY) => {}
        }
        match prune_once(&registry, &store, &host, keep).await {
            Ok(0) => {}
            Ok(images) => info!(images, "embedded registry: pruned images no release needs"),
            Err(e) => warn!(error = %e, "could not prune the embedded registry; will try again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(id: i64, image: &'static str, digest: Option<&'static str>) -> ReleaseImage<'static> {
        ReleaseImage { id, image, digest }
    }

    #[test]
    fn only_old_undeployed_images_of_our_registry_go() {
        let releases = [
            release(6, "127.0.0.1:8082/shop/web:release-6", Some("sha256:f6")),
            release(5, "127.0.0.1:8082/shop/web:release-5", None), // still building
            release(4, "127.0.0.1:8082/shop/web:release-4", Some("sha256:f4")),
            release(3, "127.0.0.1:8082/shop/web:release-3", Some("sha256:f6")), // the newest's image
            release(2, "127.0.0.1:8082/shop/web:release-2", Some("sha256:f2")),
            release(1, "registry.example/shop/web:1", Some("sha256:f1")), // another registry's
            release(0, "127.0.0.1:8082/shop/web:release-0", Some("sha256:f0")),
        ];
        let deployed = HashSet::from([2]);
        let doomed = doomed("127.0.0.1:8082", &releases, &deployed, 2);
        assert_eq!(
            doomed.into_iter().collect::<Vec<_>>(),
            [
                ("shop/web".to_string(), "sha256:f0".to_string()),
                ("shop/web".to_string(), "sha256:f4".to_string()),
            ],
            "kept: the newest two, the deployed one, an image a kept release shares, another registry's"
        );
    }
}
