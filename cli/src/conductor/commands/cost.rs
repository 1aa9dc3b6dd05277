//! `enclii cost`: what the project's services cost.

use clap::Args;

use crate::conductor::client::Client;
use crate::conductor::config::Settings;
use crate::conductor::output::{emit, number, outln, table, time};

use super::Done;

#[derive(Args, Debug)]
pub struct CostArgs {
    /// The period: `30d`, `12h`, `90m` ago, or an RFC 3339 time.
    #[arg(long, default_value = "30d")]
    since: String,
}

pub(super) async fn cost(settings: &Settings, args: CostArgs) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let report = client
        .get_query("/v1/cost", &[("project", project), ("since", args.since)])
        .await?;
    emit(settings.output, &report, |r| {
        table(
            &r["lines"],
            &["environment", "service", "cpu h", "ram GiB·h", "cents"],
            &[
                "/environment",
                "/service",
                "/cpu_hours",
                "/ram_gib_hours",
                "/cost_cents",
            ],
        );
        outln!(
            "total since {}: {} cents",
            time(&r["since"]),
            number(&r["total_cents"], 2)
        );
    });
    Ok(())
}
