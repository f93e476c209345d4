//! What a node is, as its agent reports it (Enroll and Hello), checked at the edge and turned
//! into the columns of `render.nodes`.

use std::collections::BTreeSet;

use flatrender_proto::flatrender::render::v1 as pb;

use crate::error::{RenderError, Result};
use crate::model::text;

/// Most tags on a node (the column's CHECK).
pub const MAX_TAGS: usize = 64;
/// Longest node name.
pub const MAX_NAME_CHARS: usize = 63;
/// GPUs recorded per node; more are not kept (no render machine has that many).
const MAX_GPUS: usize = 16;

/// A machine's facts in the form `render.nodes` stores them.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    /// Host name, 1..=255 characters.
    pub hostname: String,
    /// `windows`, `macos` or `linux`.
    pub os: &'static str,
    /// OS version, if reported.
    pub os_version: Option<String>,
    /// `x86_64` or `aarch64`.
    pub arch: &'static str,
    /// Installed After Effects versions, as reported.
    pub ae_versions: Vec<String>,
    /// Whether ffmpeg is there (assembly).
    pub has_ffmpeg: bool,
    /// Logical cores.
    pub cpu_cores: i32,
    /// Physical memory.
    pub ram_bytes: i64,
    /// GPUs as `nodes.gpus` JSON.
    pub gpus: serde_json::Value,
}

impl NodeFacts {
    /// Whether the node has at least one GPU.
    pub fn has_gpu(&self) -> bool {
        self.gpus.as_array().is_some_and(|gpus| !gpus.is_empty())
    }
}

/// Checks `facts` (the request field `field`).
pub fn machine_facts(field: &str, facts: Option<&pb::MachineFacts>) -> Result<NodeFacts> {
    let facts = facts.ok_or_else(|| RenderError::invalid(field, "is required"))?;
    let at = |name: &str| format!("{field}.{name}");
    let hostname = facts.hostname.trim();
    if hostname.is_empty() || hostname.chars().count() > 255 || hostname.chars().any(char::is_control) {
        return Err(RenderError::invalid(at("hostname"), "must be 1..=255 printable characters"));
    }
    let os = match pb::OperatingSystem::try_from(facts.os) {
        Ok(pb::OperatingSystem::Windows) => "windows",
        Ok(pb::OperatingSystem::Macos) => "macos",
        Ok(pb::OperatingSystem::Linux) => "linux",
        _ => return Err(RenderError::invalid(at("os"), "must be WINDOWS, MACOS or LINUX")),
    };
    let arch = match facts.arch.as_str() {
        "x86_64" | "" => "x86_64",
        "aarch64" => "aarch64",
        _ => return Err(RenderError::invalid(at("arch"), "must be x86_64 or aarch64")),
    };
    if facts.cpu_cores == 0 || facts.cpu_cores > 4096 {
        return Err(RenderError::invalid(at("cpu_cores"), "must be 1..=4096"));
    }
    let ram_bytes = i64::try_from(facts.ram_bytes)
        .ok()
        .filter(|ram| *ram > 0)
        .ok_or_else(|| RenderError::invalid(at("ram_bytes"), "must be positive"))?;
    let mut ae_versions = Vec::new();
    for (i, install) in facts.ae_installs.iter().enumerate() {
        let version = install.version.trim();
        if version.is_empty() || version.len() > 32 || !version.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(RenderError::invalid(at(&format!("ae_installs[{i}].version")), "must be like 24.2.1"));
        }
        if !ae_versions.iter().any(|v| v == version) {
            ae_versions.push(version.to_owned());
        }
    }
    let gpus: Vec<serde_json::Value> = facts
        .gpus
        .iter()
        .take(MAX_GPUS)
        .map(|gpu| {
            serde_json::json!({
                "name": text::head(&gpu.name, 200),
                "memory_bytes": gpu.memory_bytes,
                "driver": text::head(&gpu.driver_version, 64),
            })
        })
        .collect();
    let os_version = Some(facts.os_version.trim()).filter(|v| !v.is_empty()).map(|v| text::head(v, 200));
    Ok(NodeFacts {
        hostname: hostname.to_owned(),
        os,
        os_version,
        arch,
        ae_versions,
        has_ffmpeg: !facts.ffmpeg_version.trim().is_empty(),
        cpu_cores: facts.cpu_cores as i32,
        ram_bytes,
        gpus: serde_json::Value::Array(gpus),
    })
}

/// Checks an agent version (semver-like, 1..=64 characters).
pub fn agent_version(field: &str, version: &str) -> Result<String> {
    let version = version.trim();
    if version.is_empty() || version.len() > 64 || version.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RenderError::invalid(field, "must be a version such as 0.3.1"));
    }
    Ok(version.to_owned())
}

/// Checks concurrent slots: 1..=64.
pub fn slots(field: &str, slots: u32) -> Result<i32> {
    if (1..=64).contains(&slots) { Ok(slots as i32) } else { Err(RenderError::invalid(field, "must be 1..=64")) }
}

/// Whether `tag` is a valid tag: lower-case, 1..=63 characters of `[a-z0-9-_.:]`.
pub fn is_tag(tag: &str) -> bool {
    (1..=63).contains(&tag.len())
        && tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.:".contains(&b))
}

/// Checks a tag list (duplicates removed, sorted).
pub fn tags(field: &str, tags: &[String]) -> Result<Vec<String>> {
    let mut set = BTreeSet::new();
    for (i, tag) in tags.iter().enumerate() {
        if !is_tag(tag) {
            return Err(RenderError::invalid(
                format!("{field}[{i}]"),
                "must be 1..=63 lower-case characters of a-z 0-9 - _ . :",
            ));
        }
        set.insert(tag.clone());
    }
    if set.len() > MAX_TAGS {
        return Err(RenderError::invalid(field, format!("at most {MAX_TAGS} tags")));
    }
    Ok(set.into_iter().collect())
}

/// The union of two tag lists, sorted, or `INVALID_ARGUMENT` on `field` when it has too many.
pub fn union_tags(field: &str, a: &[String], b: &[String]) -> Result<Vec<String>> {
    let set: BTreeSet<&String> = a.iter().chain(b).collect();
    if set.len() > MAX_TAGS {
        return Err(RenderError::invalid(field, format!("with the token's tags, more than {MAX_TAGS}")));
    }
    Ok(set.into_iter().cloned().collect())
}

/// Whether `name` is a valid node name: 1..=63 of `[A-Za-z0-9_.-]`, starting with a letter or
/// digit (the column's CHECK).
pub fn is_node_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A node name made from a host name: other characters become `-`, leading punctuation goes,
/// at most 63 characters; `node` when nothing is left.
pub fn sanitize_name(hostname: &str) -> String {
    let replaced: String =
        hostname.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect();
    let trimmed = replaced.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let name: String = trimmed.chars().take(MAX_NAME_CHARS).collect();
    let name = name.trim_end_matches('-').to_owned();
    if name.is_empty() { "node".to_owned() } else { name }
}

/// `base` with the numeric suffix `-n`, shortened so the result stays within 63 characters.
pub fn with_suffix(base: &str, n: u32) -> String {
    let suffix = format!("-{n}");
    let keep = MAX_NAME_CHARS.saturating_sub(suffix.len());
    let base: String = base.chars().take(keep).collect();
    format!("{base}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> pb::MachineFacts {
        pb::MachineFacts {
            hostname: "render-01".into(),
            os: pb::OperatingSystem::Windows as i32,
            arch: "x86_64".into(),
            cpu_cores: 16,
            ram_bytes: 64 << 30,
            ae_installs: vec![pb::AeInstall { version: "24.2.1".into(), ..Default::default() }],
            ffmpeg_version: "ffmpeg version 6.1".into(),
            gpus: vec![pb::GpuInfo { name: "RTX".into(), ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn facts_become_columns() {
        let f = machine_facts("facts", Some(&facts())).unwrap();
        assert_eq!((f.os, f.arch, f.cpu_cores), ("windows", "x86_64", 16));
        assert_eq!(f.ae_versions, vec!["24.2.1"]);
        assert!(f.has_ffmpeg && f.has_gpu());
        for (name, broken, field) in [
            ("no os", pb::MachineFacts { os: 0, ..facts() }, "facts.os"),
            ("no host", pb::MachineFacts { hostname: " ".into(), ..facts() }, "facts.hostname"),
            ("arch", pb::MachineFacts { arch: "sparc".into(), ..facts() }, "facts.arch"),
            ("cores", pb::MachineFacts { cpu_cores: 0, ..facts() }, "facts.cpu_cores"),
            ("ram", pb::MachineFacts { ram_bytes: 0, ..facts() }, "facts.ram_bytes"),
        ] {
            let err = machine_facts("facts", Some(&broken)).unwrap_err().to_string();
            assert!(err.starts_with(field), "{name}: {err}");
        }
        assert!(machine_facts("facts", None).is_err());
    }

    #[test]
    fn tags_are_checked_and_merged() {
        assert_eq!(tags("tags", &["gpu".into(), "eu:berlin".into(), "gpu".into()]).unwrap(), vec!["eu:berlin", "gpu"]);
        assert!(tags("tags", &["GPU".into()]).unwrap_err().to_string().starts_with("tags[0]"));
        assert!(tags("tags", &[String::new()]).is_err());
        let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        assert!(tags("tags", &many).is_err());
        assert_eq!(union_tags("tags", &["a".into(), "b".into()], &["b".into(), "c".into()]).unwrap(), ["a", "b", "c"]);
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("RENDER-01.farm.local"), "RENDER-01.farm.local");
        assert_eq!(sanitize_name("--my host (2)"), "my-host--2");
        assert_eq!(sanitize_name("---"), "node");
        assert_eq!(sanitize_name(&"x".repeat(80)).len(), 63);
        assert!(is_node_name(&sanitize_name("ünïcode höst")));
        assert!(is_node_name("a"));
        assert!(!is_node_name("-a"));
        assert!(!is_node_name("a b"));
        assert_eq!(with_suffix("node", 2), "node-2");
        assert_eq!(with_suffix(&"x".repeat(63), 12).len(), 63);
        assert!(with_suffix(&"x".repeat(63), 12).ends_with("x-12"));
    }
}
