//! `enclii scale`: a service's replica range.

use clap::Args;
use serde_json::{Value, json};

use crate::conductor::Failure;
use crate::conductor::client::Client;
use crate::conductor::config::Settings;
use crate::conductor::output::{cell, emit, outln};

use super::{Done, missing, service_path};

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// The service.
    service: String,
    /// The fewest replicas (default: unchanged).
    #[arg(long)]
    min: Option<u32>,
    /// The most replicas (default: unchanged).
    #[arg(long)]
    max: Option<u32>,
}

pub(super) async fn scale(settings: &Settings, args: ScaleArgs) -> Done {
    if args.min.is_none() && args.max.is_none() {
        return Err(Failure::validation("nothing to change")
            .hint("pass --min, --max or both")
            .into());
    }
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let path = service_path(&project, &args.service);
    let current = client.get(&path).await?;
    let mut spec = current["spec"].clone();
    // The service's spec document, with its replica range changed (built up where absent;
    // anything but objects on the way is an answer this CLI does not know).
    let replicas = ["spec", "runtime", "replicas"]
        .into_iter()
        .try_fold(&mut spec, |node, key| {
            let object = node.as_object_mut()?;
            Some(object.entry(key).or_insert_with(|| json!({})))
        })
        .and_then(Value::as_object_mut)
        .ok_or_else(|| missing("/spec/spec/runtime/replicas"))?;
    for (key, value) in [("min", args.min), ("max", args.max)] {
        let value = value.or_else(|| replicas.get(key).and_then(Value::as_u64).map(|v| v as u32));
        replicas.insert(key.into(), json!(value.unwrap_or(1)));
    }
    let updated = client.put(&path, &spec).await?;
    emit(settings.output, &updated, |u| {
        outln!(
            "{}: replicas {}..{} (spec version {}); where it runs, its release is deployed again with them (reason scale)",
            args.service,
            cell(&u["spec"]["spec"]["runtime"]["replicas"]["min"]),
            cell(&u["spec"]["spec"]["runtime"]["replicas"]["max"]),
            cell(&u["spec_version"])
        )
    });
    Ok(())
}
