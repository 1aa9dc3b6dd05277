//! Free text people type into names, paths and labels: bounded, and free of characters that
//! change how other text is shown (controls such as NUL and ANSI escapes, bidirectional
//! overrides that make `txt.exe` read as `exe.txt`), so a name means what a reader sees in the
//! dashboard, a terminal or a log line.

/// Characters that reorder or hide the text around them (Unicode bidi controls and the
/// zero-width joiners and marks): never meaningful in a name, path or label.
fn is_invisible_formatting(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' // zero width space/non-joiner/joiner, LRM, RLM
        | '\u{202A}'..='\u{202E}' // LRE, RLE, PDF, LRO, RLO
        | '\u{2060}'..='\u{2069}' // word joiner, invisible operators, LRI, RLI, FSI, PDI
        | '\u{FEFF}' // zero width no-break space (BOM)
    )
}

/// What [`check_chars`] allows besides printable characters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spaces {
    /// Ordinary spaces inside the text (display names).
    Inside,
    /// No whitespace at all (paths, identifiers).
    None,
}

/// The first character that has no place in text of this kind, described for an error.
fn check_chars(s: &str, spaces: Spaces) -> Result<(), String> {
    for c in s.chars() {
        let refused =
            c.is_control() || is_invisible_formatting(c) || (c.is_whitespace() && (spaces == Spaces::None || c != ' '));
        if refused {
            return Err(format!(
                "must not contain the character U+{:04X} (control, invisible or reordering characters and \
                 {} are not allowed)",
                c as u32,
                if spaces == Spaces::None {
                    "whitespace"
                } else {
                    "whitespace other than spaces"
                }
            ));
        }
    }
    Ok(())
}

fn check_length(s: &str, max: usize) -> Result<(), String> {
    let len = s.chars().count();
    if len > max {
        return Err(format!("must be at most {max} characters (got {len})"));
    }
    Ok(())
}

/// A display name or label (a project's name, a token's name): 1–`max` characters, printable,
/// spaces allowed inside but not around it.
pub fn validate_display_name(s: &str, max: usize) -> Result<(), String> {
    check_length(s, max)?;
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if s.trim() != s {
        return Err("must not start or end with spaces".into());
    }
    check_chars(s, Spaces::Inside)
}

/// A token of text with no whitespace (a region, a member's subject): 1–`max` printable
/// characters.
pub fn validate_word(s: &str, max: usize) -> Result<(), String> {
    check_length(s, max)?;
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    check_chars(s, Spaces::None)
}

/// Longest URL path a route may match.
pub const MAX_URL_PATH: usize = 1024;

/// Checks a route's URL path prefix: starts with `/`, at most [`MAX_URL_PATH`] characters, no
/// whitespace, control or invisible characters, no query (`?`) or fragment (`#`).
pub fn validate_url_path(s: &str) -> Result<(), String> {
    check_length(s, MAX_URL_PATH)?;
    if !s.starts_with('/') {
        return Err(format!("must start with '/' (got {s:?})"));
    }
    check_chars(s, Spaces::None)?;
    if let Some(c) = s.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(format!("must not contain {c:?} (got {s:?})"));
    }
    Ok(())
}

/// Longest git ref name Enclii accepts (git itself has no limit; hosts cap them near this).
pub const MAX_GIT_REF: usize = 255;

/// The bounds every git ref must meet before git's own rules are checked: at most
/// [`MAX_GIT_REF`] characters, no control, invisible or reordering characters.
pub(crate) fn check_git_ref_text(s: &str) -> Result<(), String> {
    check_length(s, MAX_GIT_REF)?;
    check_chars(s, Spaces::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_controls_bidi_and_length() {
        assert_eq!(validate_display_name("Shop — prod", 100), Ok(()));
        assert_eq!(validate_display_name("Café 東京", 100), Ok(()));
        for bad in [
            "",
            "  ",
            " lead",
            "trail ",
            "nul\0",
            "esc\u{1b}[31m",
            "rtl\u{202E}gpj.exe",
            "zw\u{200B}j",
            "tab\tx",
            "nl\nx",
        ] {
            assert!(validate_display_name(bad, 100).is_err(), "{bad:?}");
        }
        let long = "a".repeat(101);
        assert!(validate_display_name(&long, 100).unwrap_err().contains("at most 100"));
        let huge = "a".repeat(1 << 20);
        let message = validate_display_name(&huge, 100).unwrap_err();
        assert!(message.len() < 100, "the error never echoes the input: {message}");
    }

    #[test]
    fn words_and_paths() {
        assert_eq!(validate_word("us-east-1", 63), Ok(()));
        assert_eq!(validate_word("user:ada@example.com", 254), Ok(()));
        for bad in ["", "a b", "x\u{2066}y", "\u{7f}"] {
            assert!(validate_word(bad, 63).is_err(), "{bad:?}");
        }
        assert_eq!(validate_url_path("/api/v1"), Ok(()));
        for bad in ["api", "/a b", "/a?b", "/a#b", "/\u{202E}", "/\0"] {
            assert!(validate_url_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_url_path(&format!("/{}", "a".repeat(MAX_URL_PATH))).is_err());
    }
}
