//! The software bill of materials: an image's OS packages and its repository's locked
//! dependencies, as CycloneDX 1.5 JSON.
//!
//! The document is written from our own serde types and then parsed and validated by
//! `cyclonedx-bom` before it is stored: the crate's `Purl` constructor percent-encodes the `/` of
//! namespaced names (`pkg:golang/github.com/pkg/errors`, `pkg:deb/debian/libc6`), so it cannot
//! produce correct package URLs for most of our ecosystems.

use serde::Serialize;

/// One inventoried package.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    /// The package URL type: `cargo`, `npm`, `golang`, `pypi`, `deb`, `apk`.
    pub ecosystem: String,
    /// The distribution for OS packages (`debian`, `alpine`).
    pub namespace: Option<String>,
    pub name: String,
    pub version: String,
    /// Where it was found: a lockfile path in the repository or an image path.
    pub source: String,
}

impl Package {
    pub fn new(ecosystem: &str, name: &str, version: &str) -> Self {
        Package {
            ecosystem: ecosystem.into(),
            namespace: None,
            name: name.into(),
            version: version.into(),
            source: String::new(),
        }
    }

    /// The package URL (<https://github.com/package-url/purl-spec>).
    pub fn purl(&self) -> String {
        // Namespaced names (`@scope/pkg`, `github.com/org/mod`) split at their last `/`.
        let (namespace, name) = match (&self.namespace, self.name.rsplit_once('/')) {
            (Some(ns), _) => (Some(ns.clone()), self.name.clone()),
            (None, Some((ns, name))) => (Some(ns.to_string()), name.to_string()),
            (None, None) => (None, self.name.clone()),
        };
        let namespace = namespace
            .map(|ns| ns.split('/').map(encode).collect::<Vec<_>>().join("/") + "/")
            .unwrap_or_default();
        format!(
            "pkg:{}/{namespace}{}@{}",
            self.ecosystem,
            encode(&name),
            encode(&self.version)
        )
    }
}

fn encode(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for byte in part.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What the BOM describes.
pub struct Inventory<'a> {
    /// The image, pinned: `host/repo@sha256:…`.
    pub image: &'a str,
    pub digest: &'a str,
    pub repository: &'a str,
    pub git_sha: &'a str,
    pub packages: Vec<Package>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bom<'a> {
    bom_format: &'static str,
    spec_version: &'static str,
    serial_number: String,
    version: u32,
    metadata: Metadata<'a>,
    components: Vec<Component>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    timestamp: String,
    tools: Tools,
    component: Component,
    properties: Vec<Property<'a>>,
}

#[derive(Serialize)]
struct Tools {
    components: Vec<Component>,
}

#[derive(Serialize)]
struct Component {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "bom-ref")]
    bom_ref: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purl: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    properties: Vec<Property<'static>>,
}

#[derive(Serialize)]
struct Property<'a> {
    name: &'a str,
    value: String,
}

/// The CycloneDX 1.5 JSON document for `inventory`, checked by `cyclonedx-bom`.
pub fn cyclonedx_json(inventory: &Inventory<'_>) -> Result<Vec<u8>, String> {
    let mut packages = inventory.packages.clone();
    packages.sort();
    packages.dedup_by(|a, b| a.purl() == b.purl());
    let (repo, _) = inventory.image.split_once('@').unwrap_or((inventory.image, ""));
    let image_name = repo.rsplit('/').next().unwrap_or(repo);
    let bom = Bom {
        bom_format: "CycloneDX",
        spec_version: "1.5",
        serial_number: format!("urn:uuid:{}", uuid_v4()),
        version: 1,
        metadata: Metadata {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            tools: Tools {
                components: vec![Component {
                    kind: "application",
                    bom_ref: "tool:enclii".into(),
                    name: "enclii".into(),
                    version: Some(env!("CARGO_PKG_VERSION").into()),
                    purl: None,
                    properties: Vec::new(),
                }],
            },
            component: Component {
                kind: "container",
                bom_ref: inventory.image.to_string(),
                name: repo.to_string(),
                version: Some(inventory.digest.to_string()),
                purl: Some(format!(
                    "pkg:oci/{}@{}?repository_url={}",
                    encode(image_name),
                    encode(inventory.digest),
                    encode(repo)
                )),
                properties: Vec::new(),
            },
            properties: vec![
                Property {
                    name: "enclii:git:repository",
                    value: inventory.repository.to_string(),
                },
                Property {
                    name: "enclii:git:sha",
                    value: inventory.git_sha.to_string(),
                },
            ],
        },
        components: packages
            .iter()
            .map(|p| Component {
                kind: "library",
                bom_ref: p.purl(),
                name: p.name.clone(),
                version: Some(p.version.clone()),
                purl: Some(p.purl()),
                properties: vec![Property {
                    name: "enclii:found-in",
                    value: p.source.clone(),
                }],
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&bom).map_err(|e| e.to_string())?;
    check(&json)?;
    Ok(json)
}

/// Parses the document back with `cyclonedx-bom` and validates it as 1.5.
fn check(json: &[u8]) -> Result<(), String> {
    use cyclonedx_bom::models::bom::{Bom, SpecVersion};
    use cyclonedx_bom::validation::Validate;
    let bom = Bom::parse_from_json_v1_5(json).map_err(|e| format!("the SBOM does not parse as CycloneDX 1.5: {e}"))?;
    let result = bom.validate_version(SpecVersion::V1_5);
    if result.has_errors() {
        return Err(format!("the SBOM is not valid CycloneDX 1.5: {result:?}"));
    }
    Ok(())
}

fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_urls_keep_their_namespaces() {
        assert_eq!(
            Package::new("golang", "github.com/pkg/errors", "v0.9.1").purl(),
            "pkg:golang/github.com/pkg/errors@v0.9.1"
        );
        let mut deb = Package::new("deb", "libc6", "1:2.36+deb12");
        deb.namespace = Some("debian".into());
        assert_eq!(deb.purl(), "pkg:deb/debian/libc6@1%3A2.36%2Bdeb12");
        assert_eq!(Package::new("cargo", "serde", "1.0.0").purl(), "pkg:cargo/serde@1.0.0");
    }

    #[test]
    fn the_bom_is_cyclonedx_1_5_with_every_package() {
        let json = cyclonedx_json(&Inventory {
            image: "127.0.0.1:5000/shop/api@sha256:0123",
            digest: "sha256:0123",
            repository: "https://example.com/shop",
            git_sha: "abc",
            packages: vec![
                Package::new("cargo", "serde", "1.0.0"),
                Package::new("cargo", "serde", "1.0.0"),
                Package::new("npm", "left-pad", "1.3.0"),
            ],
        })
        .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(doc["specVersion"], "1.5");
        assert_eq!(doc["components"].as_array().unwrap().len(), 2, "duplicates collapse");
        assert_eq!(doc["metadata"]["component"]["type"], "container");
    }
}
