//! Repository names, tags, digests and upload ids, checked by hand against the OCI grammar, and
//! the routing of `/v2/<name>/<suffix>` paths. Whatever passes here is safe as a path component:
//! no `..`, no leading `/`, no percent-encoding (paths are taken raw, undecoded).

use std::fmt;

use crate::error::{ErrorCode, RegistryError, Result};

/// Distribution's limit on a whole repository name.
const MAX_NAME: usize = 255;

/// A repository name, e.g. `project/service`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Name(String);

impl Name {
    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
    pub(crate) fn parse(name: &str) -> Result<Self> {
        let invalid = |why: &str| {
            RegistryError::new(
                ErrorCode::NameInvalid,
                format!(
                    "invalid repository name {name:?}: {why}; names are lowercase path components \
                     like `project/service`, each [a-z0-9] separated by '.', '_', '__' or '-'"
                ),
            )
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > MAX_NAME {
            return Err(invalid("it is longer than 255 characters"));
        }
        for component in name.split('/') {
            if !is_component(component) {
                return Err(invalid(&format!("component {component:?} does not match the grammar")));
            }
        }
        Ok(Self(name.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // A run of [a-z0-9]+.
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // A separator: '.', '_', '__' or '-'+, then another run must follow.
        match bytes[i] {
            b'.' => i += 1,
            b'_' => i += if bytes.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub(crate) fn check_tag(tag: &str) -> Result<()> {
    let bytes = tag.as_bytes();
    let first_ok = bytes.first().is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let rest_ok = bytes
        .iter()
        .skip(1)
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && bytes.len() <= 128 {
        Ok(())
    } else {
        Err(RegistryError::new(
            ErrorCode::TagInvalid,
            format!(
                "invalid tag {tag:?}: tags are 1 to 128 characters of [a-zA-Z0-9_.-] and do not start \
                 with '.' or '-'"
            ),
        ))
    }
}

/// A `sha256:<64 lowercase hex>` digest, the only algorithm this registry stores.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Digest(String);

impl Digest {
    pub(crate) fn parse(digest: &str) -> Result<Self> {
        match digest.strip_prefix("sha256:") {
            Some(hex) if is_hex(hex, 64) => Ok(Self(hex.to_owned())),
            _ => Err(RegistryError::new(
                ErrorCode::DigestInvalid,
                format!(
                    "invalid digest {digest:?}: this registry supports only sha256 digests, written \
                     sha256:<64 lowercase hex digits>"
                ),
            )),
        }
    }

    /// From a file name under `blobs/sha256/` or `revisions/sha256/`.
    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        is_hex(hex, 64).then(|| Self(hex.to_owned()))
    }

    pub(crate) fn from_sha256(hash: &[u8]) -> Self {
        Self(hex::encode(hash))
    }

    pub(crate) fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

pub(crate) fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub(crate) fn parse(reference: &str) -> Result<Self> {
        if reference.contains(':') {
            Digest::parse(reference).map(Self::Digest)
        } else {
            check_tag(reference).map(|()| Self::Tag(reference.to_owned()))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(tag) => f.write_str(tag),
            Self::Digest(digest) => digest.fmt(f),
        }
    }
}

/// What a `/v2/...` path addresses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Base,
    Blob(Name, Digest),
    UploadStart(Name),
    Upload(Name, String),
    Manifest(Name, Reference),
    Tags(Name),
    Referrers(Name, Digest),
}

/// Parses the path after `/v2/`. Names may contain slashes, so the suffix is read from the end:
/// the last one or two segments say what is addressed, everything before them is the name.
pub(crate) fn route(rest: &str) -> Result<Route> {
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let name = |upto: usize| Name::parse(&segments[..upto].join("/"));
    let at = |i: usize| if i < n { segments[i] } else { "" };
    if n >= 4 && at(n - 3) == "blobs" && at(n - 2) == "uploads" {
        let id = at(n - 1);
        let name = name(n - 3)?;
        return if id.is_empty() {
            Ok(Route::UploadStart(name))
        } else if is_hex(id, 32) {
            Ok(Route::Upload(name, id.to_owned()))
        } else {
            Err(RegistryError::new(
                ErrorCode::BlobUploadUnknown,
                format!("no upload session {id:?}: start one with POST /v2/{name}/blobs/uploads/"),
            ))
        };
    }
    if n >= 3 {
        match (at(n - 2), at(n - 1)) {
            ("blobs", "uploads") => return Ok(Route::UploadStart(name(n - 2)?)),
            ("tags", "list") => return Ok(Route::Tags(name(n - 2)?)),
            ("blobs", digest) => return Ok(Route::Blob(name(n - 2)?, Digest::parse(digest)?)),
            ("manifests", reference) => return Ok(Route::Manifest(name(n - 2)?, Reference::parse(reference)?)),
            ("referrers", digest) => return Ok(Route::Referrers(name(n - 2)?, Digest::parse(digest)?)),
            _ => {}
        }
    }
    Err(RegistryError::with_status(
        ErrorCode::Unsupported,
        axum::http::StatusCode::NOT_FOUND,
        format!(
            "no such endpoint /v2/{rest}; this registry serves /v2/<name>/blobs/…, /manifests/…, \
             /tags/list and /referrers/…"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_grammar() {
        for ok in ["a", "project/service", "a.b_c__d---e/f0", "library/busybox", "a/b/c/d"] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "a/../b",
            "..",
            ".a",
            "a.",
            "a___b",
            "a_-b",
            "a b",
            "a%2fb",
            "_manifests",
        ] {
            let err = Name::parse(bad).unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::NameInvalid), "{bad}");
        }
        assert!(Name::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags_and_digests_follow_the_grammar() {
        for ok in ["latest", "v1.2.3", "_x", "sha256-abc.sig", &"a".repeat(128)] {
            assert!(check_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "..", &"a".repeat(129), "é"] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
        let hex = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex}")).is_ok());
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha512:{hex}"),
            "sha256:abc".into(),
        ] {
            let err = Digest::parse(&bad).unwrap_err();
            assert!(err.to_string().contains("only sha256"), "{err}");
        }
    }

    #[test]
    fn routes_read_the_suffix_from_the_end() {
        let d = format!("sha256:{}", "0".repeat(64));
        let name = |s: &str| Name::parse(s).unwrap();
        assert_eq!(route("").unwrap(), Route::Base);
        assert_eq!(route("a/b/blobs/uploads/").unwrap(), Route::UploadStart(name("a/b")));
        assert_eq!(route("a/blobs/uploads").unwrap(), Route::UploadStart(name("a")));
        let id = "f".repeat(32);
        assert_eq!(
            route(&format!("a/blobs/uploads/{id}")).unwrap(),
            Route::Upload(name("a"), id)
        );
        assert!(matches!(route(&format!("blobs/blobs/{d}")).unwrap(), Route::Blob(n, _) if n == name("blobs")));
        assert!(matches!(
            route("x/manifests/manifests/latest").unwrap(),
            Route::Manifest(n, Reference::Tag(t)) if n == name("x/manifests") && t == "latest"
        ));
        assert_eq!(route("a/tags/list").unwrap(), Route::Tags(name("a")));
        assert!(matches!(
            route(&format!("a/referrers/{d}")).unwrap(),
            Route::Referrers(..)
        ));
        assert!(route("a/blobs/uploads/../../x").is_err());
        assert!(route("../manifests/latest").is_err());
        assert!(route("a/whatever").is_err());
        assert!(route("a/manifests/").is_err());
    }
}
