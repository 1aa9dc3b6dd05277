//! `.env`-style text (`enclii secrets import`, `env_file` contents): `KEY=value` lines.

/// `KEY=value` lines (blank lines and `#` comments skipped; `export ` and matching quotes
/// dropped; lines without `=` ignored), in order.
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(v);
            (k.trim().to_string(), unquoted.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_entries() {
        let entries = parse("# db\nexport DATABASE_URL=\"postgres://x\"\n\nTOKEN='a=b'\nnot a pair\n");
        assert_eq!(
            entries,
            [
                ("DATABASE_URL".to_string(), "postgres://x".to_string()),
                ("TOKEN".to_string(), "a=b".to_string())
            ]
        );
    }
}
