//! GitHub webhook payloads: the input is `<event name>\n<body>`. Parsing never panics, and what
//! the webhook handler asks of a parsed event (its intent, branch, tag, ref move) never panics.
#![no_main]

use enclii_domain::github::{GithubEvent, WebhookIntent, parse_event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (event, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"push"[..], data),
    };
    let Ok(event) = std::str::from_utf8(event) else { return };
    let Ok(parsed) = parse_event(event, body) else { return };
    match &parsed {
        GithubEvent::Push(push) => {
            let _ = (push.branch(), push.tag());
        }
        GithubEvent::PullRequest(pr) => {
            let _ = pr.preview_environment();
        }
        _ => {}
    }
    let intent = WebhookIntent::from(parsed);
    let _ = (intent.repository(), intent.ref_move());
});
