//! Dependencies declared by a repository's lockfiles, and the OS packages of an image, as
//! (ecosystem, name, version) packages with a package URL.

use std::path::Path;

use crate::sbom::Package;

/// Lockfile names this inventory reads, wherever they sit in the repository.
const LOCKFILES: &[&str] = &[
    "Cargo.lock",
    "package-lock.json",
    "go.sum",
    "requirements.txt",
    "poetry.lock",
];

/// Walks the repository (skipping `.git`, `node_modules`, `target`, `vendor`) for lockfiles.
pub fn scan_repository(root: &Path) -> Vec<Package> {
    let mut packages = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().to_string();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                if !matches!(name.as_str(), ".git" | "node_modules" | "target" | "vendor") {
                    stack.push(entry.path());
                }
            } else if kind.is_file() && LOCKFILES.contains(&name.as_str()) {
                let source = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap_or(&entry.path())
                    .display()
                    .to_string();
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    packages.extend(parse_lockfile(&name, &text).into_iter().map(|mut p| {
                        p.source = source.clone();
                        p
                    }));
                }
            }
        }
    }
    packages
}

pub fn parse_lockfile(name: &str, text: &str) -> Vec<Package> {
    match name {
        "Cargo.lock" => toml_packages(text, "cargo"),
        "poetry.lock" => toml_packages(text, "pypi"),
        "package-lock.json" => package_lock(text),
        "go.sum" => go_sum(text),
        "requirements.txt" => requirements(text),
        _ => Vec::new(),
    }
}

/// `[[package]]` tables with `name` and `version` (Cargo.lock, poetry.lock); read line by line,
/// which is all these generated files need.
fn toml_packages(text: &str, ecosystem: &str) -> Vec<Package> {
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[[package]]";
            name = None;
            continue;
        }
        if !in_package {
            continue;
        }
        if let Some(value) = toml_string(line, "name") {
            name = Some(value);
        } else if let (Some(value), Some(n)) = (toml_string(line, "version"), &name) {
            out.push(Package::new(ecosystem, n, &value));
            in_package = false;
        }
    }
    out
}

fn toml_string(line: &str, key: &str) -> Option<String> {
    let rest = line.strip_prefix(key)?.trim_start().strip_prefix('=')?.trim();
    Some(rest.trim_matches('"').to_string())
}

/// npm's lockfile v2/v3 (`packages`, keyed by install path) or v1 (`dependencies`).
fn package_lock(text: &str) -> Vec<Package> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(packages) = doc.get("packages").and_then(|p| p.as_object()) {
        for (path, meta) in packages {
            let Some(name) = path
                .rsplit("node_modules/")
                .next()
                .filter(|_| path.contains("node_modules/"))
            else {
                continue;
            };
            if let Some(version) = meta.get("version").and_then(|v| v.as_str()) {
                out.push(Package::new("npm", name, version));
            }
        }
    } else if let Some(deps) = doc.get("dependencies").and_then(|d| d.as_object()) {
        for (name, meta) in deps {
            if let Some(version) = meta.get("version").and_then(|v| v.as_str()) {
                out.push(Package::new("npm", name, version));
            }
        }
    }
    out
}

/// `module version[/go.mod] hash` lines; a module counts once.
fn go_sum(text: &str) -> Vec<Package> {
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(module), Some(version)) = (fields.next(), fields.next()) {
            seen.insert((module.to_string(), version.trim_end_matches("/go.mod").to_string()));
        }
    }
    seen.into_iter().map(|(m, v)| Package::new("golang", &m, &v)).collect()
}

/// Pinned `name==version` requirements (hashes, markers and comments ignored).
fn requirements(text: &str) -> Vec<Package> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.split(';').next()?.trim();
            let (name, version) = line.split_once("==")?;
            let name = name.split('[').next()?.trim();
            let version = version.split_whitespace().next()?.trim();
            (!name.is_empty() && !version.is_empty()).then(|| Package::new("pypi", &name.to_ascii_lowercase(), version))
        })
        .collect()
}

/// Debian's `/var/lib/dpkg/status`: installed packages.
pub fn dpkg_status(text: &str, distro: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |key: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        let installed = field("Status").is_none_or(|s| s.ends_with(" installed"));
        if let (Some(name), Some(version), true) = (field("Package"), field("Version"), installed) {
            let mut package = Package::new("deb", &name, &version);
            package.namespace = Some(distro.to_string());
            package.source = "/var/lib/dpkg/status".into();
            out.push(package);
        }
    }
    out
}

/// Alpine's `/lib/apk/db/installed`: `P:` name and `V:` version per stanza.
pub fn apk_installed(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        };
        if let (Some(name), Some(version)) = (field("P:"), field("V:")) {
            let mut package = Package::new("apk", &name, &version);
            package.namespace = Some("alpine".into());
            package.source = "/lib/apk/db/installed".into();
            out.push(package);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(packages: &[Package]) -> Vec<String> {
        packages.iter().map(|p| format!("{}@{}", p.name, p.version)).collect()
    }

    #[test]
    fn lockfiles_of_four_ecosystems() {
        let cargo = "version = 3\n\n[[package]]\nname = \"serde\"\nversion = \"1.0.200\"\nsource = \"registry\"\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\n[metadata]\nname = \"x\"\n";
        assert_eq!(
            names(&parse_lockfile("Cargo.lock", cargo)),
            ["serde@1.0.200", "app@0.1.0"]
        );
        let npm = r#"{"lockfileVersion":3,"packages":{"":{"name":"app","version":"1.0.0"},"node_modules/express":{"version":"4.19.2"},"node_modules/@types/node":{"version":"20.1.0"}}}"#;
        assert_eq!(
            names(&parse_lockfile("package-lock.json", npm)),
            ["@types/node@20.1.0", "express@4.19.2"]
        );
        let go = "github.com/pkg/errors v0.9.1 h1:abc=\ngithub.com/pkg/errors v0.9.1/go.mod h1:def=\n";
        assert_eq!(names(&parse_lockfile("go.sum", go)), ["github.com/pkg/errors@v0.9.1"]);
        let py = "# pinned\nDjango==5.0.1 --hash=sha256:x\nrequests[socks]==2.31.0 ; python_version > '3'\nflask>=2\n";
        assert_eq!(
            names(&parse_lockfile("requirements.txt", py)),
            ["django@5.0.1", "requests@2.31.0"]
        );
        assert_eq!(
            Package::new("npm", "@types/node", "20.1.0").purl(),
            "pkg:npm/%40types/node@20.1.0"
        );
    }

    #[test]
    fn os_package_databases() {
        let dpkg = "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: never\nStatus: purge ok not-installed\nVersion: 2\n";
        let p = dpkg_status(dpkg, "debian");
        assert_eq!(names(&p), ["libc6@2.36-9"]);
        assert_eq!(p[0].purl(), "pkg:deb/debian/libc6@2.36-9");
        let apk = "C:Q1\nP:musl\nV:1.2.4-r2\n\nP:busybox\nV:1.36.1-r5\n";
        assert_eq!(names(&apk_installed(apk)), ["musl@1.2.4-r2", "busybox@1.36.1-r5"]);
    }
}
