//! Results on stdout: the API's JSON as is with `--output json`, aligned tables otherwise.

use serde_json::Value;

use super::OutputFormat;

/// Prints `value` as JSON, or runs `text` to print it for people.
pub fn emit(format: OutputFormat, value: &Value, text: impl FnOnce(&Value)) {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        OutputFormat::Text => text(value),
    }
}

/// A field as text: strings bare, `null` as `-`, everything else as JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows of `fields` of each object in `items` under `headers`, columns aligned.
pub fn table(items: &Value, headers: &[&str], fields: &[&str]) {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            fields
                .iter()
                .map(|f| cell(item.pointer(f).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    print_rows(headers, rows);
}

pub fn print_rows(headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        println!("(none)");
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
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

/// Epoch milliseconds as an RFC 3339 time (UTC, seconds).
pub fn time(ms: &Value) -> String {
    ms.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}
