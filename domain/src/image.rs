//! Image references: `host:5000/project/service:tag` or `…@sha256:…`.

/// The repository of a reference, without tag or digest: `host:5000/a/b:tag` → `host:5000/a/b`.
pub fn image_name(reference: &str) -> &str {
    let reference = reference.split_once('@').map_or(reference, |(name, _)| name);
    split_tag(reference).0
}

/// `host:5000/a/b:tag` → (`host:5000/a/b`, `tag`); no tag → `latest`.
pub fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "latest"),
    }
}

/// The reference pinned to `digest`: `host:5000/a/b:tag` → `host:5000/a/b@sha256:…`.
pub fn pinned(reference: &str, digest: &str) -> String {
    format!("{}@{digest}", image_name(reference))
}

/// Checks an image reference given literally (an add-on's `image`): `name[:tag][@digest]` of
/// letters, digits and `._-/:@`, at most 512 characters.
pub fn validate_reference(reference: &str) -> Result<(), String> {
    if reference.is_empty() || reference.len() > 512 {
        return Err(format!(
            "must be an image reference of 1 to 512 characters, such as `postgres:16` (got {} characters)",
            reference.len()
        ));
    }
    match reference
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-/:@".contains(*c)))
    {
        Some(c) => Err(format!(
            "must be an image reference such as `postgres:16` or `registry.example/db:1`; {c:?} is not allowed"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tags_and_pins() {
        assert_eq!(image_name("127.0.0.1:5000/shop/api:abc"), "127.0.0.1:5000/shop/api");
        assert_eq!(
            image_name("127.0.0.1:5000/shop/api@sha256:00"),
            "127.0.0.1:5000/shop/api"
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/shop/api"),
            ("127.0.0.1:5000/shop/api", "latest")
        );
        assert_eq!(pinned("r/a:1", "sha256:ff"), "r/a@sha256:ff");
    }
}
