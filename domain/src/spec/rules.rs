//! Pure validators and value parsers for the Service Spec's scalar fields. Each returns a short,
//! actionable message on failure; the caller attaches the field path.

use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};

/// Checks a DNS-label slug: lowercase `a-z`, `0-9` and `-`, starting with a letter, not ending
/// with `-`, at most 63 characters. Project, service, volume, job and secret names are slugs.
pub fn validate_slug(s: &str) -> Result<(), String> {
    const RULE: &str = "lowercase letters, digits and '-', starting with a letter, not ending with '-'";
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("must be at most 63 characters (got {})", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-')) {
        return Err(format!("invalid character {c:?} in {s:?}: use {RULE}"));
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("{s:?} must start with a letter"));
    }
    if s.ends_with('-') {
        return Err(format!("{s:?} must not end with '-'"));
    }
    Ok(())
}

/// Checks an environment name: `dev`, `stage`, `prod` or `preview-<n>` (`n` a positive integer
/// without leading zeros, as made from a pull request number).
pub fn validate_environment_name(s: &str) -> Result<(), String> {
    match s {
        "dev" | "stage" | "prod" => return Ok(()),
        _ => {}
    }
    if let Some(n) = s.strip_prefix("preview-")
        && !n.is_empty()
        && !n.starts_with('0')
        && n.bytes().all(|b| b.is_ascii_digit())
        && n.parse::<u64>().is_ok()
    {
        return Ok(());
    }
    Err(format!(
        "must be `dev`, `stage`, `prod` or `preview-<n>` with n a positive integer (got {s:?})"
    ))
}

/// Checks an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn validate_env_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!("must match [A-Za-z_][A-Za-z0-9_]* (got {s:?})"))
    }
}

/// Checks a path inside the repository: relative, and not escaping the repository root through
/// `..` once normalised lexically (`a/../b` is fine, `a/../../b` is not).
pub fn validate_repo_relative_path(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty (use `.` for the repository root)".into());
    }
    if s.contains('\0') {
        return Err("must not contain NUL characters".into());
    }
    if s.starts_with('/') || s.starts_with('\\') || s.as_bytes().get(1) == Some(&b':') {
        return Err(format!("must be a path relative to the repository root (got {s:?})"));
    }
    let mut depth: usize = 0;
    for part in s.split('/') {
        match part {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return Err(format!("must stay inside the repository (got {s:?})")),
            },
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Checks an absolute path inside a container (`mountPath`): starts with `/`, no `..`
/// component, not `/` itself.
pub fn validate_absolute_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!("must be an absolute path starting with '/' (got {s:?})"));
    }
    if s.split('/').all(|p| p.is_empty() || p == ".") {
        return Err("must not be the root directory".into());
    }
    if s.split('/').any(|p| p == "..") {
        return Err(format!("must not contain '..' components (got {s:?})"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// Checks `fromAddon.key`: a key every add-on kind has, or PostgreSQL's `database` (a Redis
/// add-on without it is refused at deploy time, naming the add-on).
pub fn validate_addon_key(key: &str) -> Result<(), String> {
    const KEYS: [&str; 6] = ["url", "host", "port", "user", "password", "database"];
    if KEYS.contains(&key) {
        return Ok(());
    }
    Err(format!(
        "unknown add-on key `{key}`; expected one of: {}",
        KEYS.join(", ")
    ))
}

/// Whether `host` (a route's host, maybe a `*.` wildcard) would take traffic meant for the hosts
/// Enclii generates under `preview_domain` (`<service>-preview-<n>.<preview_domain>`): the
/// domain itself, any host under it, or a wildcard that covers it (`*.localhost` covers
/// `preview.localhost`). Only the platform binds those, each to its own project.
pub fn is_platform_host(host: &str, preview_domain: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let domain = preview_domain.trim_end_matches('.').to_ascii_lowercase();
    let under = |name: &str, parent: &str| name == parent || name.ends_with(&format!(".{parent}"));
    match host.strip_prefix("*.") {
        Some(base) => under(&domain, base) || under(base, &domain),
        None => under(&host, &domain),
    }
}

/// Checks a DNS hostname as used by a route: lowercase labels of `a-z0-9-` (1–63 characters, not
/// starting or ending with `-`), at most 253 characters, an optional leading `*.` wildcard, not
/// an IP address.
pub fn validate_hostname(s: &str) -> Result<(), String> {
    let name = s.strip_prefix("*.").unwrap_or(s);
    dns_labels(name, s, " (a wildcard is allowed only as a leading `*.`)")?;
    if name.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("must be a hostname, not an IP address (got {s:?})"));
    }
    Ok(())
}

/// Checks a DNS subdomain name (e.g. a storage class): lowercase `a-z0-9-` labels separated by
/// dots, at most 253 characters.
pub fn validate_dns_subdomain(s: &str) -> Result<(), String> {
    dns_labels(s, s, "")
}

/// Checks the dot-separated labels of `name` (which is `whole` without any wildcard).
fn dns_labels(name: &str, whole: &str, hint: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if whole.len() > 253 {
        return Err(format!("must be at most 253 characters (got {})", whole.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("{whole:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-')) {
            return Err(format!(
                "invalid character {c:?} in {whole:?}: labels are lowercase letters, digits and '-'{hint}"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} must not start or end with '-'"));
        }
    }
    Ok(())
}

/// Checks a git repository URL: `https://`, `http://`, `ssh://`, `file://` or scp-like
/// `user@host:path` (e.g. `git@github.com:org/repo.git`).
pub fn validate_git_url(s: &str) -> Result<(), String> {
    const FORMS: &str = "https://, http://, ssh://, file:// or git@host:path";
    if s.is_empty() {
        return Err(format!("must not be empty (use {FORMS})"));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must not contain {c:?}"));
    }
    if let Some(path) = s.strip_prefix("file://") {
        return if path.len() > 1 && path.starts_with('/') {
            Ok(())
        } else {
            Err(format!(
                "a file:// URL needs an absolute path, e.g. file:///srv/repo (got {s:?})"
            ))
        };
    }
    let remote = ["https://", "http://", "ssh://"]
        .iter()
        .find_map(|scheme| s.strip_prefix(scheme));
    if let Some(rest) = remote {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some((userinfo, host_port)) = authority.rsplit_once('@') {
            // A user name alone is how ssh:// names its account (`ssh://git@host/…`); anything
            // else before the `@` is a credential, stored and shown with the spec if accepted.
            let credential = !s.starts_with("ssh://") || userinfo.contains(':');
            if credential {
                let scheme = &s[..s.len() - rest.len()];
                return Err(format!(
                    "must not carry credentials (got {scheme}***@{host_port}/…): remove them from the URL \
                     and store the token as the project secret GIT_TOKEN, which Enclii sends when it clones"
                ));
            }
        }
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_host_port(host_port);
        if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("has an invalid port in {s:?}"));
        }
        if !valid_url_host(host) {
            return Err(format!("has an invalid or missing host in {s:?}"));
        }
        if path.trim_matches('/').is_empty() {
            return Err(format!("needs a repository path after the host (got {s:?})"));
        }
        return Ok(());
    }
    if let Some((user, rest)) = s.split_once('@')
        && let Some((host, path)) = rest.split_once(':')
        && !s.contains("://")
    {
        let user_ok = !user.is_empty() && user.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !user_ok {
            return Err(format!("has an invalid user in {s:?}"));
        }
        if !valid_url_host(host) {
            return Err(format!("has an invalid or missing host in {s:?}"));
        }
        if path.trim_matches('/').is_empty() {
            return Err(format!("needs a repository path after ':' (got {s:?})"));
        }
        return Ok(());
    }
    Err(format!("must be a git URL ({FORMS}), got {s:?}"))
}

/// `host[:port]` or `[v6]:port` → (host, port).
fn split_host_port(hp: &str) -> (&str, Option<&str>) {
    if hp.starts_with('[') {
        if let Some(end) = hp.find(']') {
            let (host, rest) = hp.split_at(end + 1);
            if rest.is_empty() {
                return (host, None);
            }
            if let Some(port) = rest.strip_prefix(':') {
                return (host, Some(port));
            }
        }
        return (hp, None);
    }
    match hp.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hp, None),
    }
}

fn valid_url_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !v6.is_empty() && v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    }
    !host.is_empty()
        && !host.starts_with(['.', '-'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
}

/// Checks a branch name against git's ref-name rules (`git check-ref-format --branch`): no
/// whitespace or control characters, none of `~^:?*[\`, no `..`, `@{` or `//`, not starting with
/// `-` or `/`, no component starting with `.`, not ending with `/`, `.` or `.lock`, not `@`.
pub fn validate_git_ref(s: &str) -> Result<(), String> {
    super::text::check_git_ref_text(s)?;
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(*c))
    {
        return Err(format!("must not contain {c:?} (got {s:?})"));
    }
    for bad in ["..", "@{", "//"] {
        if s.contains(bad) {
            return Err(format!("must not contain {bad:?} (got {s:?})"));
        }
    }
    if s.starts_with('-') || s.starts_with('/') {
        return Err(format!("must not start with '-' or '/' (got {s:?})"));
    }
    if s.ends_with('/') || s.ends_with('.') || s.ends_with(".lock") {
        return Err(format!("must not end with '/', '.' or \".lock\" (got {s:?})"));
    }
    if s.split('/').any(|c| c.starts_with('.') || c.ends_with(".lock")) {
        return Err(format!(
            "no component may start with '.' or end with \".lock\" (got {s:?})"
        ));
    }
    if s == "@" {
        return Err("must not be \"@\"".into());
    }
    Ok(())
}

/// Splits a decimal number `123`, `0.5`, `1.25` into integer and fraction digits.
fn split_decimal(s: &str) -> Option<(&str, &str)> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let valid = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty()) && !(s.ends_with('.'));
    valid.then_some((int, frac))
}

/// `int.frac × 10^scale` as an integer, if exact and in range.
fn scaled(int: &str, frac: &str, scale: u32) -> Option<u128> {
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize {
        return None;
    }
    let frac_value: u128 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    let pow = 10u128.checked_pow(scale)?;
    let frac_scale = 10u128.checked_pow(scale - frac.len() as u32)?;
    int.checked_mul(pow)?.checked_add(frac_value.checked_mul(frac_scale)?)
}

/// Parses a Kubernetes CPU quantity (`500m`, `1`, `0.5`, `2.25`) into millicores; it must be
/// positive and a whole number of millicores.
pub fn parse_cpu_millis(s: &str) -> Result<u64, String> {
    const FORMS: &str = "a CPU quantity like `500m`, `1` or `0.5`";
    let (number, is_milli) = match s.strip_suffix('m') {
        Some(n) => (n, true),
        None => (s, false),
    };
    let (int, frac) = split_decimal(number).ok_or_else(|| format!("must be {FORMS} (got {s:?})"))?;
    let millis = if is_milli {
        if !frac.trim_end_matches('0').is_empty() {
            return Err(format!("must be a whole number of millicores (got {s:?})"));
        }
        scaled(int, "", 0)
    } else {
        scaled(int, frac, 3)
    };
    let millis = match millis {
        Some(m) => u64::try_from(m).map_err(|_| format!("is too large (got {s:?})"))?,
        None if frac.trim_end_matches('0').len() > 3 => {
            return Err(format!("must be a whole number of millicores (got {s:?})"));
        }
        None => return Err(format!("is too large (got {s:?})")),
    };
    if millis == 0 {
        return Err(format!("must be greater than 0 (got {s:?})"));
    }
    Ok(millis)
}

/// Parses a Kubernetes memory quantity (`512Mi`, `1Gi`, `128M`, `1.5Gi`, plain bytes) into bytes;
/// it must be positive and a whole number of bytes.
pub fn parse_memory_bytes(s: &str) -> Result<u64, String> {
    const SUFFIXES: [(&str, u128); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let bad = || {
        format!(
            "must be a memory quantity: a number with an optional suffix Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E, like `512Mi` or `1Gi` (got {s:?})"
        )
    };
    let (number, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
        .unwrap_or((s, 1));
    let (int, frac) = split_decimal(number).ok_or_else(bad)?;
    let frac = frac.trim_end_matches('0');
    // value = (int.frac) × multiplier = (int × 10^f + frac) × multiplier / 10^f
    let pow = 10u128.checked_pow(frac.len() as u32).ok_or_else(bad)?;
    let mantissa = scaled(int, frac, frac.len() as u32).ok_or_else(|| format!("is too large (got {s:?})"))?;
    let total = mantissa
        .checked_mul(multiplier)
        .ok_or_else(|| format!("is too large (got {s:?})"))?;
    if total % pow != 0 {
        return Err(format!("must be a whole number of bytes (got {s:?})"));
    }
    let bytes = u64::try_from(total / pow).map_err(|_| format!("is too large (got {s:?})"))?;
    if bytes == 0 {
        return Err(format!("must be greater than 0 (got {s:?})"));
    }
    Ok(bytes)
}

/// Parses a duration made of `<integer><unit>` parts, units `ms`, `s`, `m`, `h` (e.g. `30s`,
/// `2m`, `1h30m`); it must be positive.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("must be a duration like `30s`, `2m` or `1h30m` (got {s:?})");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let (number, tail) = rest.split_at(digits);
        let letters = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(letters);
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("is too long (got {s:?})"))?;
        rest = tail;
    }
    if total_ms == 0 {
        return Err(format!("must be greater than 0 (got {s:?})"));
    }
    Ok(Duration::from_millis(total_ms))
}

/// Checks a 5-field cron schedule (minute hour day-of-month month day-of-week), with lists,
/// ranges, `*/n` steps and 3-letter month and weekday names. Croner's non-POSIX extensions
/// (`L`, `W`, `#`, `?`, `+`, seconds and year fields) are refused so that a schedule means the
/// same to every cron implementation.
pub fn validate_cron(s: &str) -> Result<(), String> {
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "must be a cron schedule with 5 fields (minute hour day-of-month month day-of-week), got {} in {s:?}",
            fields.len()
        ));
    }
    for (i, (field, name)) in fields.iter().zip(FIELDS).enumerate() {
        if let Some(c) = field
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "*,-/".contains(*c)))
        {
            return Err(format!("invalid character {c:?} in the {name} field of {s:?}"));
        }
        let known: &[&str] = match i {
            3 => &MONTHS,
            4 => &DAYS,
            _ => &[],
        };
        for word in field
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
        {
            if !known.iter().any(|n| n.eq_ignore_ascii_case(word)) {
                return Err(format!("unexpected {word:?} in the {name} field of {s:?}"));
            }
        }
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    parser
        .parse(s)
        .map(|_| ())
        .map_err(|e| format!("is not a valid cron schedule ({e}): {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::text::validate_url_path;

    fn ok(f: fn(&str) -> Result<(), String>, good: &[&str], bad: &[&str]) {
        for s in good {
            assert_eq!(f(s), Ok(()), "{s:?} should be valid");
        }
        for s in bad {
            assert!(f(s).is_err(), "{s:?} should be invalid");
        }
    }

    #[test]
    fn slugs() {
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        ok(
            validate_slug,
            &["api", "solarpunk-saas", "a", "a1-b2", &long],
            &["", "Api", "1api", "-api", "api-", "a_b", "a.b", "a b", "é", &too_long],
        );
        assert!(validate_slug("api-").unwrap_err().contains("must not end with '-'"));
    }

    #[test]
    fn environment_names() {
        ok(
            validate_environment_name,
            &["dev", "stage", "prod", "preview-1", "preview-42"],
            &[
                "",
                "production",
                "Prod",
                "preview",
                "preview-",
                "preview-0",
                "preview-01",
                "preview--1",
                "preview-1a",
                "preview-99999999999999999999999",
            ],
        );
    }

    #[test]
    fn env_names() {
        ok(
            validate_env_name,
            &["NODE_ENV", "_x", "a1", "A"],
            &["", "1A", "A-B", "A B", "Ä"],
        );
    }

    #[test]
    fn repository_relative_paths() {
        ok(
            validate_repo_relative_path,
            &[
                ".",
                "Dockerfile",
                "docker/Dockerfile.prod",
                "a/../b",
                "./x/",
                "a/b/../../c",
            ],
            &["", "/Dockerfile", "..", "../x", "a/../../b", "./..", "\\x", "C:\\x"],
        );
    }

    #[test]
    fn absolute_paths() {
        ok(
            validate_absolute_path,
            &["/data", "/var/lib/app/"],
            &["data", "/", "//", "/a/../b", ""],
        );
    }

    #[test]
    fn url_paths() {
        ok(
            validate_url_path,
            &["/", "/healthz", "/api/v1/"],
            &["", "healthz", "/a b", "/a?b=1", "/#x"],
        );
    }

    #[test]
    fn hostnames() {
        let long_label = format!("{}.dev", "a".repeat(64));
        ok(
            validate_hostname,
            &[
                "api.example.dev",
                "*.example.dev",
                "localhost",
                "a-b.c1.io",
                "xn--bcher-kva.example",
            ],
            &[
                "",
                "*.",
                "API.example.dev",
                "api..dev",
                "-api.dev",
                "api-.dev",
                "a.*.dev",
                "*",
                "api.dev.",
                "a_b.dev",
                "10.0.0.1",
                &long_label,
            ],
        );
        ok(validate_dns_subdomain, &["standard", "fast.ssd"], &["*.x", "Fast", ""]);
    }

    #[test]
    fn git_urls() {
        ok(
            validate_git_url,
            &[
                "https://github.com/org/repo",
                "https://github.com/org/repo.git",
                "http://git.local:8080/org/repo",
                "ssh://git@github.com/org/repo.git",
                "ssh://git@[::1]:22/repo",
                "git@github.com:org/repo.git",
                "file:///srv/git/repo",
            ],
            &[
                "",
                "github.com/org/repo",
                "https://",
                "https://github.com",
                "https://github.com/",
                "https://git hub.com/org/repo",
                "https://host:port/repo",
                "ftp://host/repo",
                "git@github.com:",
                "@github.com:org/repo",
                "file://relative",
                "file://",
                "https://user:pass@github.com/org/repo",
                "https://ghp_token@github.com/org/repo",
                "ssh://git:pass@github.com/org/repo",
            ],
        );
    }

    #[test]
    fn platform_hosts_are_those_under_or_covering_the_preview_domain() {
        let d = "preview.localhost";
        for host in [
            "preview.localhost",
            "api-preview-7.preview.localhost",
            "*.localhost",
            "*.preview.localhost",
            "*.x.preview.localhost",
            "API-PREVIEW-7.Preview.Localhost",
        ] {
            assert!(is_platform_host(host, d), "{host}");
        }
        for host in [
            "localhost",
            "shop.localhost",
            "*.shop.localhost",
            "preview.example.com",
            "xpreview.localhost",
            "*.example.com",
        ] {
            assert!(!is_platform_host(host, d), "{host}");
        }
    }

    #[test]
    fn credentials_in_git_urls_are_refused_without_being_echoed() {
        for url in [
            "https://user:hunter2@github.com/org/repo",
            "http://hunter2@git.local/org/repo",
            "ssh://git:hunter2@github.com/org/repo",
        ] {
            let message = validate_git_url(url).unwrap_err();
            assert!(!message.contains("hunter2"), "{message}");
            assert!(message.contains("GIT_TOKEN") && message.contains("***@"), "{message}");
        }
    }

    #[test]
    fn git_refs() {
        ok(
            validate_git_ref,
            &["main", "feature/login", "release-1.2", "v1.0", "user@x"],
            &[
                "",
                "has space",
                "a..b",
                "a~1",
                "a^",
                "a:b",
                "a?",
                "a*",
                "a[b",
                "a\\b",
                "-x",
                "/x",
                "x/",
                "x.lock",
                "x.",
                "a//b",
                "a/.b",
                "a@{1}",
                "@",
                "a\tb",
            ],
        );
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("1"), Ok(1000));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis(".25"), Ok(250));
        assert_eq!(parse_cpu_millis("2.000"), Ok(2000));
        assert_eq!(parse_cpu_millis("1500m"), Ok(1500));
        for bad in [
            "",
            "0",
            "0m",
            "0.0",
            "m",
            "-1",
            "1.",
            "1.5m",
            "0.0001",
            "1k",
            "1 ",
            "abc",
            "99999999999999999999999",
        ] {
            assert!(parse_cpu_millis(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_memory_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory_bytes("128M"), Ok(128_000_000));
        assert_eq!(parse_memory_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_memory_bytes("1024"), Ok(1024));
        assert_eq!(parse_memory_bytes("10k"), Ok(10_000));
        for bad in [
            "", "0", "0Gi", "Mi", "1MB", "1mi", "1K", "-1Gi", "0.5", "1e3", "16Ei", "1 Gi", "1.Gi",
        ] {
            assert!(parse_memory_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "0s", "2", "m", "2x", "2 m", "-1s", "1.5m", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cron_schedules() {
        ok(
            validate_cron,
            &[
                "0 2 * * *",
                "*/15 * * * *",
                "0 9-17 * * MON-FRI",
                "0 0 1 jan,jul *",
                "5,35 */2 1-15 * 0",
                "0 0 * * 7",
            ],
            &[
                "",
                "garbage",
                "* * * *",
                "0 0 * * * *",
                "60 * * * *",
                "* 24 * * *",
                "* * 0 * *",
                "* * * 13 *",
                "* * * * 8",
                "0 0 L * *",
                "0 0 * * 5#2",
                "0 0 15W * *",
                "0 0 ? * *",
                "@daily",
                "0 0 * * +1",
                "0 0 * * MONDAY",
                "0 0 * MON *",
                "*/0 * * * *",
                "a b c d e",
                "1-2-3 * * * *",
            ],
        );
    }
}
