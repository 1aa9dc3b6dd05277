//! `enclii logs`, `ps` and `events`: a service's runtime log, its services as they run, and what
//! its replicas did on their own.

use clap::Args;
use serde_json::Value;

use crate::conductor::OutputFormat;
use crate::conductor::client::Client;
use crate::conductor::config::Settings;
use crate::conductor::output::{cell, emit, items, outln, print_rows, printable, rows, time};

use super::{Done, project_path, service_path};

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The service.
    service: String,
    /// Keep printing new lines as the replicas print them (until Ctrl-C).
    #[arg(short, long)]
    follow: bool,
    /// The environment (default: the service's own).
    #[arg(long = "env")]
    environment: Option<String>,
    /// Only lines matching this regular expression.
    #[arg(long)]
    grep: Option<String>,
    /// How many of the latest lines to show first.
    #[arg(long, default_value_t = 100)]
    tail: u32,
}

fn print_log_line(format: OutputFormat, line: &Value) {
    match format {
        OutputFormat::Json => outln!("{line}"),
        OutputFormat::Text => outln!(
            "{} {} │ {}",
            line["timestamp"]
                .as_str()
                .map(|t| t.get(..19).unwrap_or(t))
                .unwrap_or("-"),
            cell(&line["replica"]),
            printable(line["line"].as_str().unwrap_or(""))
        ),
    }
}

pub(super) async fn logs(settings: &Settings, args: LogsArgs) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let path = format!("{}/logs", service_path(&project, &args.service));
    let mut query = vec![("tail", args.tail.to_string())];
    if let Some(env) = args.environment {
        query.push(("environment", env));
    }
    if let Some(grep) = args.grep {
        query.push(("grep", grep));
    }
    if args.follow {
        query.push(("follow", "true".into()));
        let format = settings.output;
        client
            .events(&path, &query, |event| {
                if event.event == "line"
                    && let Ok(line) = serde_json::from_str::<Value>(&event.data)
                {
                    print_log_line(format, &line);
                }
                true
            })
            .await?;
        return Ok(());
    }
    let lines = client.get_query(&path, &query).await?;
    emit(settings.output, &lines, |lines| {
        for line in items(lines) {
            print_log_line(OutputFormat::Text, line);
        }
    });
    Ok(())
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Every service in this environment (default: each service's own).
    #[arg(long = "env")]
    environment: Option<String>,
}

pub(super) async fn ps(settings: &Settings, args: PsArgs) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let mut query = Vec::new();
    if let Some(env) = args.environment {
        query.push(("environment", env));
    }
    let status = client
        .get_query(&format!("{}/status", project_path(&project)), &query)
        .await?;
    emit(settings.output, &status, |services| {
        let rows = rows(services, |s| {
            vec![
                cell(&s["service"]),
                cell(&s["environment"]),
                cell(&s["release"]),
                format!("{}/{}", cell(&s["replicas_ready"]), cell(&s["replicas_desired"])),
                s["restarts"].as_u64().map_or("-".into(), |r| r.to_string()),
                cell(&s["health"]),
                s["p95_ms"].as_f64().map_or("-".into(), |ms| format!("{ms:.0}ms")),
                s["error_rate"]
                    .as_f64()
                    .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
                s["canary_percent"].as_i64().map_or("-".into(), |p| format!("{p}%")),
                cell(&s["url"]),
            ]
        });
        print_rows(
            &[
                "service", "env", "release", "replicas", "restarts", "health", "p95", "errors", "canary", "url",
            ],
            rows,
        );
    });
    Ok(())
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// The service.
    service: String,
    /// How many, newest first (at most 500).
    #[arg(long, default_value_t = 50)]
    limit: i64,
}

pub(super) async fn events(settings: &Settings, args: EventsArgs) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let path = format!("{}/events", service_path(&project, &args.service));
    let events = client.get_query(&path, &[("limit", args.limit.to_string())]).await?;
    emit(settings.output, &events, |events| {
        let rows = rows(events, |e| {
            vec![
                time(&e["created_at"]),
                cell(&e["environment"]),
                cell(&e["release"]),
                cell(&e["replica"]),
                cell(&e["kind"]),
                cell(&e["detail"]),
            ]
        });
        print_rows(&["when", "env", "release", "replica", "event", "detail"], rows);
    });
    Ok(())
}
