//! Building without a Dockerfile (a Rust, Go or Node project), and finding the Dockerfile line a
//! failed build step came from.

use std::path::Path;

/// A generated Dockerfile for a repository that has none, named by what was detected. The base
/// images are the official language images; the operator can mirror them into the registry.
pub fn detect_dockerfile(context: &Path) -> Option<(&'static str, String)> {
    if context.join("Cargo.toml").is_file() {
        return Some((
            "rust (Cargo.toml)",
            "FROM rust:1-slim AS build\nWORKDIR /src\nCOPY . .\nRUN cargo build --release --locked\n\
             FROM debian:bookworm-slim\nCOPY --from=build /src/target/release/ /app/\nCMD [\"sh\", \"-c\", \"exec /app/$(ls /app | grep -v '\\\\.d$' | head -n1)\"]\n"
                .into(),
        ));
    }
    if context.join("go.mod").is_file() {
        return Some((
            "go (go.mod)",
            "FROM golang:1 AS build\nWORKDIR /src\nCOPY . .\nRUN CGO_ENABLED=0 go build -o /app .\n\
             FROM gcr.io/distroless/static\nCOPY --from=build /app /app\nCMD [\"/app\"]\n"
                .into(),
        ));
    }
    if context.join("package.json").is_file() {
        let install = if context.join("package-lock.json").is_file() {
            "npm ci --omit=dev"
        } else {
            "npm install --omit=dev"
        };
        return Some((
            "node (package.json)",
            format!("FROM node:20-slim\nWORKDIR /app\nCOPY . .\nRUN {install}\nCMD [\"npm\", \"start\"]\n"),
        ));
    }
    None
}

/// The 1-based line of the Dockerfile instruction a BuildKit vertex name points at, e.g.
/// `[3/4] RUN ./configure && make` or `[build 2/5] COPY . .`.
pub fn instruction_line(dockerfile: &str, vertex: &str) -> Option<usize> {
    let instruction = vertex.trim();
    let instruction = match instruction.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(_, i)| i.trim())?,
        None => instruction,
    };
    let wanted = normalise(instruction);
    if wanted.is_empty() {
        return None;
    }
    // Join continuation lines, remembering where each instruction starts.
    let mut start = 0;
    let mut current = String::new();
    for (index, line) in dockerfile.lines().enumerate() {
        let trimmed = line.trim();
        if current.is_empty() {
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            start = index + 1;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                if normalise(&current) == wanted {
                    return Some(start);
                }
                current.clear();
            }
        }
    }
    None
}

fn normalise(instruction: &str) -> String {
    let mut words = instruction.split_whitespace();
    let keyword = words.next().unwrap_or("").to_ascii_uppercase();
    std::iter::once(keyword)
        .chain(words.map(str::to_string))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_vertices_map_to_their_dockerfile_line() {
        let dockerfile =
            "# syntax\nFROM busybox\n\nWORKDIR /app\nRUN echo one && \\\n    echo two\ncopy . .\nRUN exit 3\n";
        assert_eq!(instruction_line(dockerfile, "[3/4] RUN exit 3"), Some(8));
        assert_eq!(
            instruction_line(dockerfile, "[2/4] RUN echo one &&      echo two"),
            Some(5)
        );
        assert_eq!(instruction_line(dockerfile, "[build 3/4] COPY . ."), Some(7));
        assert_eq!(instruction_line(dockerfile, "[4/4] RUN exit 4"), None);
    }

    #[test]
    fn projects_without_a_dockerfile_are_detected() {
        let dir = std::env::temp_dir().join(format!("enclii-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(detect_dockerfile(&dir).is_none());
        std::fs::write(dir.join("go.mod"), "module x\n").unwrap();
        assert_eq!(detect_dockerfile(&dir).unwrap().0, "go (go.mod)");
        std::fs::write(dir.join("Cargo.toml"), "[package]\n").unwrap();
        let (kind, dockerfile) = detect_dockerfile(&dir).unwrap();
        assert_eq!(kind, "rust (Cargo.toml)");
        assert!(dockerfile.contains("cargo build --release --locked"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
