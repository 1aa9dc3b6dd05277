//! Credentials in URLs written before they were refused (issue 14, defect 5:
//! `https://user:token@host/…` in a repository URL was stored as written and shown to every
//! member): [`strip_url_credentials`] removes them from any text — a URL, a spec document, an
//! audit diff — so stores written by older versions can be cleaned, and what cannot be rewritten
//! (the append-only audit trail) is shown without them.

use std::borrow::Cow;

/// `text` with the user info of every `scheme://user:secret@host` in it removed. `ssh://git@host`
/// keeps its account name (a user without a secret is how ssh names the account); any other
/// user info before an `@` is a credential. The authority ends at `/`, whitespace, a quote or a
/// backslash (text inside JSON or YAML).
pub fn strip_url_credentials(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        let end = after
            .find(|c: char| matches!(c, '/' | '"' | '\'' | '\\') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        out.push_str(before);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) if !before.ends_with("ssh://") || userinfo.contains(':') => {
                out.push_str(host);
                changed = true;
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::strip_url_credentials;

    #[test]
    fn credentials_go_and_everything_else_stays() {
        let cases = [
            ("https://bob:hunter2@github.com/org/shop", "https://github.com/org/shop"),
            (
                "https://ghp_token@github.com/org/shop.git",
                "https://github.com/org/shop.git",
            ),
            (
                r#"{"repository":"http://u:p@git.local:3000/a/b","branch":"main"}"#,
                r#"{"repository":"http://git.local:3000/a/b","branch":"main"}"#,
            ),
            (
                "git:\n  repository: https://x:y@h.test/r\n  branch: main\n",
                "git:\n  repository: https://h.test/r\n  branch: main\n",
            ),
            ("ssh://git@github.com/org/shop", "ssh://git@github.com/org/shop"),
            ("ssh://git:secret@github.com/org/shop", "ssh://github.com/org/shop"),
            (
                "two https://a:b@one.test/x and https://c:d@two.test/y",
                "two https://one.test/x and https://two.test/y",
            ),
            (
                "mail me@example.com, see https://example.com/a@b",
                "mail me@example.com, see https://example.com/a@b",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(strip_url_credentials(text), want, "{text}");
        }
        assert!(matches!(
            strip_url_credentials("https://github.com/org/shop"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
