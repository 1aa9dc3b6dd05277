//! Results on stdout: the API's JSON as is with `--output json`, aligned tables otherwise.

use serde_json::Value;

use super::OutputFormat;

/// Writes one line to stdout. When stdout is gone (`enclii logs -f | head`), the reader wants no
/// more: stop quietly instead of panicking as `println!` would.
pub fn write_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(i32::from(super::exit::FAILURE));
    }
}

/// `println!` for results: see [`write_line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::conductor::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Prints `value` as JSON, or runs `text` to print it for people.
pub fn emit(format: OutputFormat, value: &Value, text: impl FnOnce(&Value)) {
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        OutputFormat::Text => text(value),
    }
}

/// A number with `decimals` places, `-` when there is none (and never `-0.00`).
pub fn number(value: &Value, decimals: usize) -> String {
    match value.as_f64() {
        Some(n) => {
            let text = format!("{n:.decimals$}");
            match text.strip_prefix('-') {
                Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
                _ => text,
            }
        }
        None => "-".into(),
    }
}

/// A field as text: strings bare, `null` as `-`, everything else as JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => printable(s),
        other => other.to_string(),
    }
}

/// Text from the server (an app's log line, a job's error) made safe for a terminal: control
/// characters (escape sequences could retitle the window, write the clipboard, hide text) are
/// shown escaped (`\u{1b}`), a tab becomes a space.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push(' '),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// The items of a JSON array (none when it is not one).
pub fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// A row of cells for each item of a JSON array.
pub fn rows(value: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    items(value).map(row).collect()
}

/// Rows of `fields` of each object in `items` under `headers`, columns aligned.
pub fn table(items: &Value, headers: &[&str], fields: &[&str]) {
    let rows = rows(items, |item| {
        fields
            .iter()
            .map(|f| cell(item.pointer(f).unwrap_or(&Value::Null)))
            .collect()
    });
    print_rows(headers, rows);
}

pub fn print_rows(headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        outln!("(none)");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

/// A time (epoch milliseconds or RFC 3339 text) as `YYYY-MM-DD HH:MM:SS` UTC; `-` when it is
/// neither.
pub fn time(value: &Value) -> String {
    let at = match value {
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        other => other.as_i64().and_then(chrono::DateTime::from_timestamp_millis),
    };
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_of_odd_values() {
        assert_eq!(number(&serde_json::json!(-0.0001), 2), "0.00");
        assert_eq!(number(&serde_json::json!(-1.5), 2), "-1.50");
        assert_eq!(number(&Value::Null, 2), "-");
        assert_eq!(time(&serde_json::json!(i64::MAX)), "-");
        assert_eq!(time(&serde_json::json!("x")), "-");
        assert_eq!(printable("a\u{1b}]52;c;x\u{7}\tb\nc"), "a\\u{1b}]52;c;x\\u{7} b\\nc");
        assert_eq!(
            time(&serde_json::json!("2026-11-29T20:02:56.807Z")),
            "2026-11-29 20:02:56"
        );
    }
}
