//! The pipeline file `.pbft-ci.yml` (and the node's default pipeline): its
//! parsing, validation and digest.
//!
//! The format is close to what Woodpecker users know:
//!
//! ```yaml
//! image: busybox          # default image of the steps
//! timeout: 10m            # whole pipeline: seconds, or "90s", "10m", "1h" (default 1h)
//! network: false          # default false
//! steps:
//!   - name: build
//!     image: other        # optional, overrides
//!     commands: ["make", "make test"]
//!     environment: { KEY: value }
//!     timeout: 60         # optional, per step
//! ```
//!
//! Anchors, aliases and merge keys (`<<: *defaults`) work; tags, several
//! documents and unknown fields are refused. `image` is optional everywhere:
//! whether a step without one can run is the executor's business (the local
//! runner ignores images), so the job layer decides.
//!
//! The YAML parser is `saphyr-parser`: safe Rust, YAML 1.2, maintained (the
//! successor of yaml-rust), few dependencies, and every event it gives
//! carries its line, so every error here, from the syntax to a duplicate step
//! name, quotes its line and field (`line 4: steps[1].commands: expected a
//! sequence`). Not serde_yaml (archived), serde_yml (ill-reputed), nor its
//! maintained forks serde_yaml_ng and serde_norway (unsafe libyaml, and no
//! positions for errors found after deserializing); serde-saphyr would do,
//! but its current line needs a newer Rust than ours.
//!
//! Errors are results (`InvalidPipeline`): they are built from the file
//! alone, so every correct replica finds the same. Only a file this machine
//! cannot read is a [`PipelineError::Fault`].
//!
//! Never: runs anything, or reads anything but the one file, never through a
//! symbolic link.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde::Serialize;

use crate::wire::limits::STEPS_MAX;
use crate::wire::{encode, Digest};

/// The pipeline file, in the repository's root.
pub const FILE: &str = ".pbft-ci.yml";
/// A larger pipeline file is invalid, and not read.
pub const FILE_BYTES_MAX: u64 = 64 * 1024;
/// The pipeline's timeout when the file names none.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(3600);
/// No timeout may be longer.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);
pub const STEP_NAME_BYTES_MAX: usize = 64;
pub const IMAGE_BYTES_MAX: usize = 256;
/// YAML nodes a file may expand to, aliases included (no alias bombs).
const NODES_MAX: usize = 20_000;
/// Nesting a file may have; a pipeline needs four levels.
const DEPTH_MAX: usize = 32;
/// How much of a user's string an error quotes.
const QUOTE_CHARS_MAX: usize = 64;

/// A validated pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipeline {
    /// The steps' image unless a step names its own.
    pub image: Option<String>,
    /// The whole pipeline's timeout.
    pub timeout: Duration,
    /// Whether steps may reach the network.
    pub network: bool,
    /// At least one, at most [`STEPS_MAX`], with unique names.
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// `[A-Za-z0-9._-]`, at most [`STEP_NAME_BYTES_MAX`] bytes.
    pub name: String,
    pub image: Option<String>,
    /// At least one; run in order by `sh -c`.
    pub commands: Vec<String>,
    /// Names `[A-Za-z_][A-Za-z0-9_]*`.
    pub environment: BTreeMap<String, String>,
    /// The step's own timeout; the pipeline's bounds it too.
    pub timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// The file is not a valid pipeline (or there is none and no default):
    /// the request's error, the same on every correct replica.
    #[error("{0}")]
    Invalid(String),
    /// This machine could not read the file: retried, then abstained on.
    #[error("reading {FILE}: {0}")]
    Fault(String),
}

impl PipelineError {
    pub fn is_fault(&self) -> bool {
        matches!(self, PipelineError::Fault(_))
    }
}

impl Pipeline {
    /// Parses and validates a pipeline file's text.
    pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        let root = tree(text)?;
        if is_null(&root) {
            return Err(at(&root, "", "the pipeline is empty"));
        }
        let top = mapping(&root, "", Some(&["image", "timeout", "network", "steps"]))?;
        let field = |name: &str| top.get(name).map(|(_, v)| *v).filter(|v| !is_null(v));
        let image = field("image").map(|n| image(n, "image")).transpose()?;
        let timeout = field("timeout").map(|n| duration(n, "timeout")).transpose()?.unwrap_or(TIMEOUT_DEFAULT);
        let network = field("network").map(|n| boolean(n, "network")).transpose()?.unwrap_or(false);
        let Some((_, steps_node)) = top.get("steps") else {
            return Err(at(&root, "", "missing field \"steps\""));
        };
        let Value::Seq(items) = &steps_node.value else {
            return Err(at(steps_node, "steps", "expected a sequence"));
        };
        if items.is_empty() {
            return Err(at(steps_node, "steps", "at least one step is needed"));
        }
        if items.len() > STEPS_MAX {
            return Err(at(steps_node, "steps", format!("{} steps, more than {STEPS_MAX}", items.len())));
        }
        let mut steps = Vec::with_capacity(items.len());
        let mut names = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("steps[{i}]");
            let (step, name_node) = step(item, &path)?;
            if !names.insert(step.name.clone()) {
                let msg = format!("duplicate step name {}", quote(&step.name));
                return Err(at(name_node, &format!("{path}.name"), msg));
            }
            steps.push(step);
        }
        Ok(Pipeline { image, timeout, network, steps })
    }

    /// The digest results record: over a canonical encoding of the parsed
    /// pipeline, so reformatting the file (comments, quoting, flow or block
    /// style, key order, anchors) leaves it as it is.
    pub fn digest(&self) -> Digest {
        #[derive(Serialize)]
        struct CanonicalStep<'a> {
            name: &'a str,
            image: Option<&'a str>,
            commands: &'a [String],
            environment: &'a BTreeMap<String, String>,
            timeout: Option<(u64, u32)>,
        }
        #[derive(Serialize)]
        struct Canonical<'a> {
            image: Option<&'a str>,
            timeout: (u64, u32),
            network: bool,
            steps: Vec<CanonicalStep<'a>>,
        }
        let exact = |d: Duration| (d.as_secs(), d.subsec_nanos());
        let canonical = Canonical {
            image: self.image.as_deref(),
            timeout: exact(self.timeout),
            network: self.network,
            steps: self
                .steps
                .iter()
                .map(|s| CanonicalStep {
                    name: &s.name,
                    image: s.image.as_deref(),
                    commands: &s.commands,
                    environment: &s.environment,
                    timeout: s.timeout.map(exact),
                })
                .collect(),
        };
        Digest::of_parts(b"pbft-ci/pipeline/v1", &[&encode(&canonical)])
    }

    /// Step `i`'s image: its own, else the pipeline's; `None` when neither
    /// names one (or there is no step `i`).
    pub fn step_image(&self, i: usize) -> Option<&str> {
        let step = self.steps.get(i)?;
        step.image.as_deref().or(self.image.as_deref())
    }

    /// Step `i`'s timeout: its own, bounded by the pipeline's.
    pub fn step_timeout(&self, i: usize) -> Duration {
        match self.steps.get(i).and_then(|s| s.timeout) {
            Some(t) => t.min(self.timeout),
            None => self.timeout,
        }
    }
}

/// The pipeline of the checked-out `workspace`: its [`FILE`] when there is
/// one, else `default`. A file that is a symbolic link, not a regular file,
/// or larger than [`FILE_BYTES_MAX`] is invalid and never read.
pub fn load(workspace: &Path, default: Option<&Pipeline>) -> Result<Pipeline, PipelineError> {
    let path = workspace.join(FILE);
    let fault = |e: std::io::Error| PipelineError::Fault(e.to_string());
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let none = || PipelineError::Invalid(format!("no {FILE} and no default pipeline"));
            return default.cloned().ok_or_else(none);
        }
        Err(e) => return Err(fault(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(PipelineError::Invalid(format!("{FILE} is a symbolic link; it must be a regular file")));
    }
    if !meta.is_file() {
        return Err(PipelineError::Invalid(format!("{FILE} is not a regular file")));
    }
    let too_large =
        |len: u64| PipelineError::Invalid(format!("{FILE} is {len} bytes, over the bound of {FILE_BYTES_MAX}"));
    if meta.len() > FILE_BYTES_MAX {
        return Err(too_large(meta.len()));
    }
    let file = std::fs::File::open(&path).map_err(fault)?;
    // Nothing runs in the workspace yet; still, read only what was checked.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let opened = file.metadata().map_err(fault)?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(PipelineError::Fault(format!("{FILE} changed while it was read")));
        }
    }
    let mut bytes = Vec::new();
    file.take(FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(fault)?;
    if bytes.len() as u64 > FILE_BYTES_MAX {
        return Err(too_large(bytes.len() as u64));
    }
    let text = String::from_utf8(bytes).map_err(|_| PipelineError::Invalid(format!("{FILE} is not UTF-8")))?;
    Pipeline::parse(&text)
}

/// A YAML node with the line it starts on, aliases expanded.
#[derive(Clone, Debug)]
struct Node {
    line: usize,
    value: Value,
}

#[derive(Clone, Debug)]
enum Value {
    Scalar { text: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    fn size(&self) -> usize {
        1 + match &self.value {
            Value::Scalar { .. } => 0,
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(entries) => entries.iter().map(|(k, v)| k.size() + v.size()).sum(),
        }
    }
}

fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS_MAX) {
        Some((end, _)) => format!("{:?}…", &s[..end]),
        None => format!("{s:?}"),
    }
}

fn invalid(line: usize, path: &str, msg: impl Display) -> PipelineError {
    if path.is_empty() {
        PipelineError::Invalid(format!("line {line}: {msg}"))
    } else {
        PipelineError::Invalid(format!("line {line}: {path}: {msg}"))
    }
}

fn at(node: &Node, path: &str, msg: impl Display) -> PipelineError {
    invalid(node.line, path, msg)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The document's tree, from the parser's events. Bounded in nodes and depth.
fn tree(text: &str) -> Result<Node, PipelineError> {
    /// A collection still open: its line, anchor and what it holds so far.
    struct Open {
        line: usize,
        anchor: usize,
        value: Value,
        key: Option<Node>,
    }
    fn open_collection(open: &mut Vec<Open>, line: usize, anchor: usize, value: Value) -> Result<(), PipelineError> {
        if open.len() >= DEPTH_MAX {
            return Err(invalid(line, "", format!("nested deeper than {DEPTH_MAX} levels")));
        }
        open.push(Open { line, anchor, value, key: None });
        Ok(())
    }
    let mut parser = Parser::new_from_str(text);
    let mut open: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let (mut root, mut nodes, mut documents) = (None, 0usize, 0usize);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| invalid(e.marker().line(), "", e.info()))?;
        let line = span.start.line();
        let tagged = |tag: &Option<_>| match tag {
            Some(_) => Err(invalid(line, "", "YAML tags are not supported")),
            None => Ok(()),
        };
        let done = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(invalid(line, "", "more than one YAML document"));
                }
                None
            }
            Event::Alias(id) => {
                let node = anchors.get(&id).ok_or_else(|| invalid(line, "", "unknown alias"))?.clone();
                nodes += node.size();
                Some((Node { line, value: node.value }, 0))
            }
            Event::Scalar(text, style, anchor, tag) => {
                tagged(&tag)?;
                let plain = style == ScalarStyle::Plain;
                Some((Node { line, value: Value::Scalar { text: text.into_owned(), plain } }, anchor))
            }
            Event::SequenceStart(anchor, tag) => {
                tagged(&tag)?;
                open_collection(&mut open, line, anchor, Value::Seq(Vec::new()))?;
                None
            }
            Event::MappingStart(anchor, tag) => {
                tagged(&tag)?;
                open_collection(&mut open, line, anchor, Value::Map(Vec::new()))?;
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let closed = open.pop().expect("the parser balances collections");
                Some((Node { line: closed.line, value: closed.value }, closed.anchor))
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        let Some((node, anchor)) = done else { continue };
        nodes += 1;
        if nodes > NODES_MAX {
            return Err(invalid(line, "", format!("more than {NODES_MAX} YAML nodes (aliases included)")));
        }
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match open.last_mut() {
            None => root = Some(node),
            Some(Open { value: Value::Seq(items), .. }) => items.push(node),
            Some(Open { value: Value::Map(entries), key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
            Some(Open { value: Value::Scalar { .. }, .. }) => unreachable!("only collections are open"),
        }
    }
    root.ok_or_else(|| invalid(1, "", "the pipeline is empty"))
}

fn is_null(node: &Node) -> bool {
    matches!(&node.value, Value::Scalar { text, plain: true } if ["", "~", "null", "Null", "NULL"].contains(&text.as_str()))
}

/// A mapping's entries by key, merge keys (`<<`) applied: its own keys win,
/// then the merged mappings' in order. Keys outside `known` (when given) and
/// duplicate keys are refused.
type Fields<'a> = BTreeMap<&'a str, (&'a Node, &'a Node)>;

fn mapping<'a>(node: &'a Node, path: &str, known: Option<&[&str]>) -> Result<Fields<'a>, PipelineError> {
    let Value::Map(entries) = &node.value else {
        return Err(at(node, path, "expected a mapping"));
    };
    let mut fields = Fields::new();
    let mut merges = Vec::new();
    for (k, v) in entries {
        let Value::Scalar { text: key, plain } = &k.value else {
            return Err(at(k, path, "a key must be a string"));
        };
        if key == "<<" && *plain {
            merges.push(v);
            continue;
        }
        if let Some(known) = known {
            if !known.contains(&key.as_str()) {
                let msg = format!("unknown field (expected one of: {})", known.join(", "));
                return Err(at(k, &join(path, &quote_key(key)), msg));
            }
        }
        if fields.insert(key.as_str(), (k, v)).is_some() {
            return Err(at(k, &join(path, &quote_key(key)), "duplicate key"));
        }
    }
    for merge in merges {
        let sources: Vec<&Node> = match &merge.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![merge],
        };
        for source in sources {
            for (key, entry) in mapping(source, path, known)? {
                fields.entry(key).or_insert(entry);
            }
        }
    }
    Ok(fields)
}

/// A key as a path shows it: as it is when it is a plain name, quoted otherwise.
fn quote_key(key: &str) -> String {
    let plain = !key.is_empty() && key.len() <= QUOTE_CHARS_MAX;
    if plain && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)) {
        key.to_string()
    } else {
        quote(key)
    }
}

fn string(node: &Node, path: &str) -> Result<String, PipelineError> {
    match &node.value {
        Value::Scalar { text, .. } if !is_null(node) => {
            // A NUL cannot reach a process (argument or environment).
            if text.contains('\0') {
                return Err(at(node, path, "contains a NUL character"));
            }
            Ok(text.clone())
        }
        _ => Err(at(node, path, "expected a string")),
    }
}

fn image(node: &Node, path: &str) -> Result<String, PipelineError> {
    let image = string(node, path)?;
    if image.is_empty() || image.len() > IMAGE_BYTES_MAX {
        return Err(at(node, path, format!("an image name has 1 to {IMAGE_BYTES_MAX} bytes")));
    }
    if image.starts_with('-') || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(at(node, path, format!("invalid image name {}", quote(&image))));
    }
    Ok(image)
}

fn boolean(node: &Node, path: &str) -> Result<bool, PipelineError> {
    match &node.value {
        Value::Scalar { text, plain: true } if ["true", "True", "TRUE"].contains(&text.as_str()) => Ok(true),
        Value::Scalar { text, plain: true } if ["false", "False", "FALSE"].contains(&text.as_str()) => Ok(false),
        _ => Err(at(node, path, "expected true or false")),
    }
}

/// Whole seconds (`90`), or a number with a unit: `90s`, `10m`, `1h`.
fn duration(node: &Node, path: &str) -> Result<Duration, PipelineError> {
    let expected = || at(node, path, "expected seconds, or a duration such as \"90s\", \"10m\", \"1h\"");
    let Value::Scalar { text, .. } = &node.value else { return Err(expected()) };
    let (digits, unit) = match text.as_bytes().last() {
        Some(b's') => (&text[..text.len() - 1], 1),
        Some(b'm') => (&text[..text.len() - 1], 60),
        Some(b'h') => (&text[..text.len() - 1], 3600),
        _ => (text.as_str(), 1),
    };
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected());
    }
    let secs: u64 = digits.parse().map_err(|_| expected())?;
    let d = Duration::from_secs(secs * unit);
    if d.is_zero() {
        return Err(at(node, path, "must be longer than 0"));
    }
    if d > TIMEOUT_MAX {
        return Err(at(node, path, "must be at most 24h"));
    }
    Ok(d)
}

/// One step, and the node of its name (for the duplicate check's line).
fn step<'a>(node: &'a Node, path: &str) -> Result<(Step, &'a Node), PipelineError> {
    let fields = mapping(node, path, Some(&["name", "image", "commands", "environment", "timeout"]))?;
    let field = |name: &str| fields.get(name).map(|(_, v)| *v).filter(|v| !is_null(v));
    let required = |name: &str| {
        fields.get(name).map(|(_, v)| *v).ok_or_else(|| at(node, path, format!("missing field \"{name}\"")))
    };

    let name_node = required("name")?;
    let name_path = join(path, "name");
    let name = string(name_node, &name_path)?;
    if name.is_empty() || name.len() > STEP_NAME_BYTES_MAX {
        return Err(at(name_node, &name_path, format!("a step name has 1 to {STEP_NAME_BYTES_MAX} bytes")));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(at(name_node, &name_path, format!("{} has characters outside [A-Za-z0-9._-]", quote(&name))));
    }

    let image = field("image").map(|n| image(n, &join(path, "image"))).transpose()?;

    let commands_node = required("commands")?;
    let commands_path = join(path, "commands");
    let Value::Seq(items) = &commands_node.value else {
        return Err(at(commands_node, &commands_path, "expected a sequence"));
    };
    if items.is_empty() {
        return Err(at(commands_node, &commands_path, "at least one command is needed"));
    }
    let mut commands = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let item_path = format!("{commands_path}[{j}]");
        let command = string(item, &item_path)?;
        if command.trim().is_empty() {
            return Err(at(item, &item_path, "an empty command"));
        }
        commands.push(command);
    }

    let mut environment = BTreeMap::new();
    if let Some(env) = field("environment") {
        let env_path = join(path, "environment");
        for (key, (key_node, value)) in mapping(env, &env_path, None)? {
            let key_path = join(&env_path, &quote_key(key));
            let mut bytes = key.bytes();
            let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
            if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(at(key_node, &key_path, "a variable name is [A-Za-z_][A-Za-z0-9_]*"));
            }
            environment.insert(key.to_string(), string(value, &key_path)?);
        }
    }

    let timeout = field("timeout").map(|n| duration(n, &join(path, "timeout"))).transpose()?;
    Ok((Step { name, image, commands, environment, timeout }, name_node))
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;

    const EXAMPLE: &str = "\
image: busybox          # default image of the steps
timeout: 10m            # whole pipeline
network: false
steps:
  - name: build
    image: other
    commands: [\"make\", \"make test\"]
    environment: { KEY: value }
    timeout: 60
  - name: check
    commands:
      - ./check.sh
";

    fn error(text: &str) -> String {
        match Pipeline::parse(text) {
            Ok(p) => panic!("parsed: {p:?}"),
            Err(e) => {
                assert!(!e.is_fault());
                e.to_string()
            }
        }
    }

    fn one_step(extra: &str) -> String {
        format!("steps:\n  - name: s\n    commands: [true]\n{extra}")
    }

    #[test]
    fn the_documented_example_parses() {
        let p = Pipeline::parse(EXAMPLE).unwrap();
        assert_eq!(p.image.as_deref(), Some("busybox"));
        assert_eq!(p.timeout, Duration::from_secs(600));
        assert!(!p.network);
        assert_eq!(p.steps.len(), 2);
        let build = &p.steps[0];
        assert_eq!(build.name, "build");
        assert_eq!(build.image.as_deref(), Some("other"));
        assert_eq!(build.commands, ["make", "make test"]);
        assert_eq!(build.environment, BTreeMap::from([("KEY".to_string(), "value".to_string())]));
        assert_eq!(build.timeout, Some(Duration::from_secs(60)));
        assert_eq!(p.steps[1].commands, ["./check.sh"]);
        assert_eq!(p.step_image(0), Some("other"));
        assert_eq!(p.step_image(1), Some("busybox"), "the pipeline's image");
        assert_eq!(p.step_image(2), None);
        assert_eq!(p.step_timeout(0), Duration::from_secs(60));
        assert_eq!(p.step_timeout(1), Duration::from_secs(600), "the pipeline's timeout");
    }

    #[test]
    fn defaults_apply_and_image_is_optional() {
        let p = Pipeline::parse("steps:\n  - name: s\n    commands: [true]\n").unwrap();
        assert_eq!(p.image, None);
        assert_eq!(p.step_image(0), None, "the job layer decides");
        assert_eq!(p.timeout, TIMEOUT_DEFAULT);
        assert_eq!(TIMEOUT_DEFAULT, Duration::from_secs(3600));
        assert!(!p.network);
        assert_eq!(p.steps[0].timeout, None);
        assert!(p.steps[0].environment.is_empty());
        // Null means absent.
        let p = Pipeline::parse("image: ~\ntimeout:\nsteps:\n  - name: s\n    commands: [true]\n    image: null\n");
        assert_eq!(p.unwrap().timeout, TIMEOUT_DEFAULT);
        assert!(Pipeline::parse(&one_step("network: true")).unwrap().network);
    }

    #[test]
    fn timeouts_take_seconds_or_units_and_are_bounded() {
        let timeout = |t: &str| Pipeline::parse(&format!("timeout: {t}\n{}", one_step(""))).map(|p| p.timeout);
        assert_eq!(timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(timeout("\"90\""), Ok(Duration::from_secs(90)));
        assert_eq!(timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(timeout("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(timeout("24h"), Ok(TIMEOUT_MAX));
        assert_eq!(timeout("86400"), Ok(TIMEOUT_MAX));
        let e = |t: &str| timeout(t).unwrap_err().to_string();
        assert_eq!(e("0"), "line 1: timeout: must be longer than 0");
        assert_eq!(e("0s"), "line 1: timeout: must be longer than 0");
        assert_eq!(e("86401"), "line 1: timeout: must be at most 24h");
        assert_eq!(e("25h"), "line 1: timeout: must be at most 24h");
        for bad in ["1.5h", "-5", "abc", "10d", "h", "1h30m", "[1]", "99999999999999999999", "0x10"] {
            assert!(e(bad).starts_with("line 1: timeout: expected seconds"), "{bad}: {}", e(bad));
        }
        // A step's timeout, bounded by the pipeline's.
        let p = Pipeline::parse(&format!("timeout: 30\n{}", one_step("    timeout: 1h\n"))).unwrap();
        assert_eq!(p.steps[0].timeout, Some(Duration::from_secs(3600)));
        assert_eq!(p.step_timeout(0), Duration::from_secs(30));
        assert_eq!(error(&one_step("    timeout: 0\n")), "line 4: steps[0].timeout: must be longer than 0");
    }

    #[test]
    fn errors_quote_the_line_and_the_field() {
        let text = "\
steps:
  - name: a
    commands: [x]
  - name: b
    commands: make
";
        assert_eq!(error(text), "line 5: steps[1].commands: expected a sequence");
        let text = "\
image: busybox
steps:
  - name: build
    commands: [x]
  - name: test
    commands: [y]
  - name: build
    commands: [z]
";
        assert_eq!(error(text), "line 7: steps[2].name: duplicate step name \"build\"");
        let text = "steps:\n  - name: a\n    imag: busybox\n    commands: [x]\n";
        assert_eq!(
            error(text),
            "line 3: steps[0].imag: unknown field (expected one of: name, image, commands, environment, timeout)"
        );
        assert_eq!(
            error(&format!("when: push\n{}", one_step(""))),
            "line 1: when: unknown field (expected one of: image, timeout, network, steps)"
        );
        assert_eq!(error("image: busybox\n"), "line 1: missing field \"steps\"");
        assert_eq!(error("steps:\n  - name: a\n"), "line 2: steps[0]: missing field \"commands\"");
        assert_eq!(error("steps:\n  - commands: [x]\n"), "line 2: steps[0]: missing field \"name\"");
        assert_eq!(
            error("steps:\n  - name: a\n    commands: [x, [y]]\n"),
            "line 3: steps[0].commands[1]: expected a string"
        );
        assert_eq!(error("steps: {}\n"), "line 1: steps: expected a sequence");
        assert_eq!(error("steps:\n  - just a string\n"), "line 2: steps[0]: expected a mapping");
        assert_eq!(error("- a\n- b\n"), "line 1: expected a mapping");
        assert_eq!(error(&format!("network: yes\n{}", one_step(""))), "line 1: network: expected true or false");
        assert_eq!(error(&format!("image: [a]\n{}", one_step(""))), "line 1: image: expected a string");
        // Syntax errors carry the parser's line.
        let e = error("steps:\n  - name: a\n    commands: [x\n  - name: b\n");
        assert!(e.starts_with("line 4: "), "{e}");
        let e = error("image: busybox\nsteps: [\n");
        assert!(e.starts_with("line 3: "), "{e}");
        let e = error("steps: []\n bad: indent\n");
        assert!(e.starts_with("line 2: "), "{e}");
    }

    #[test]
    fn steps_are_between_one_and_the_bound() {
        assert_eq!(error("steps: []\n"), "line 1: steps: at least one step is needed");
        assert_eq!(error("steps:\n"), "line 1: steps: expected a sequence");
        let many: String = (0..=STEPS_MAX).map(|i| format!("  - {{name: s{i}, commands: [x]}}\n")).collect();
        assert_eq!(error(&format!("steps:\n{many}")), format!("line 2: steps: {} steps, more than 256", STEPS_MAX + 1));
        let most: String = (0..STEPS_MAX).map(|i| format!("  - {{name: s{i}, commands: [x]}}\n")).collect();
        assert_eq!(Pipeline::parse(&format!("steps:\n{most}")).unwrap().steps.len(), STEPS_MAX);
    }

    #[test]
    fn step_names_are_short_plain_and_unique() {
        let named = |n: &str| Pipeline::parse(&format!("steps:\n  - name: {n}\n    commands: [x]\n"));
        for ok in ["build", "a.b_c-D9", "\"1\"", &"x".repeat(STEP_NAME_BYTES_MAX)] {
            assert!(named(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(STEP_NAME_BYTES_MAX + 1);
        assert_eq!(named(&long).unwrap_err().to_string(), "line 2: steps[0].name: a step name has 1 to 64 bytes");
        assert_eq!(named("\"\"").unwrap_err().to_string(), "line 2: steps[0].name: a step name has 1 to 64 bytes");
        assert_eq!(
            named("\"a b\"").unwrap_err().to_string(),
            "line 2: steps[0].name: \"a b\" has characters outside [A-Za-z0-9._-]"
        );
        for bad in ["a/b", "fünf", "\"x\\ty\"", "$x"] {
            assert!(named(bad).unwrap_err().to_string().contains("outside [A-Za-z0-9._-]"), "{bad}");
        }
        assert_eq!(named("~").unwrap_err().to_string(), "line 2: steps[0].name: expected a string");
    }

    #[test]
    fn commands_are_needed_and_not_empty() {
        assert_eq!(
            error("steps:\n  - name: a\n    commands: []\n"),
            "line 3: steps[0].commands: at least one command is needed"
        );
        assert_eq!(
            error("steps:\n  - name: a\n    commands: [x, \" \"]\n"),
            "line 3: steps[0].commands[1]: an empty command"
        );
        assert_eq!(
            error("steps:\n  - name: a\n    commands: [x, ~]\n"),
            "line 3: steps[0].commands[1]: expected a string"
        );
        assert_eq!(
            error("steps:\n  - name: a\n    commands: [\"a\\0b\"]\n"),
            "line 3: steps[0].commands[0]: contains a NUL character"
        );
        // Scalars are taken as written: numbers and booleans are text.
        let p = Pipeline::parse("steps:\n  - name: a\n    commands: [true, 3.10, 0x1]\n").unwrap();
        assert_eq!(p.steps[0].commands, ["true", "3.10", "0x1"]);
    }

    #[test]
    fn environment_names_are_shell_names() {
        let env = |e: &str| Pipeline::parse(&one_step(&format!("    environment:\n      {e}\n")));
        let p = env("_A1: x").unwrap();
        assert_eq!(p.steps[0].environment["_A1"], "x");
        assert_eq!(env("N: 3").unwrap().steps[0].environment["N"], "3");
        for bad in ["1A: x", "A-B: x", "\"\": x", "\"A B\": x", "Ä: x"] {
            let e = env(bad).unwrap_err().to_string();
            assert!(e.starts_with("line 5: steps[0].environment."), "{bad}: {e}");
            assert!(e.ends_with("a variable name is [A-Za-z_][A-Za-z0-9_]*"), "{bad}: {e}");
        }
        assert_eq!(env("A-B: x").unwrap_err().to_string().split(": ").nth(1), Some("steps[0].environment.A-B"));
        assert_eq!(env("A: ~").unwrap_err().to_string(), "line 5: steps[0].environment.A: expected a string");
        assert_eq!(env("A: [x]").unwrap_err().to_string(), "line 5: steps[0].environment.A: expected a string");
        assert_eq!(env("A: x\n      A: y").unwrap_err().to_string(), "line 6: steps[0].environment.A: duplicate key");
        let e = error(&one_step("    environment: [A]\n"));
        assert_eq!(e, "line 4: steps[0].environment: expected a mapping");
    }

    #[test]
    fn images_are_plain_names() {
        let p = Pipeline::parse(&one_step("    image: registry.example.org:5000/team/app@sha256:abc\n")).unwrap();
        assert_eq!(p.step_image(0), Some("registry.example.org:5000/team/app@sha256:abc"));
        assert_eq!(error(&one_step("    image: \"a b\"\n")), "line 4: steps[0].image: invalid image name \"a b\"");
        assert_eq!(error(&one_step("    image: -x\n")), "line 4: steps[0].image: invalid image name \"-x\"");
        assert_eq!(error(&one_step("    image: \"\"\n")), "line 4: steps[0].image: an image name has 1 to 256 bytes");
    }

    #[test]
    fn yaml_features_beyond_the_format_are_refused() {
        assert_eq!(error(""), "line 1: the pipeline is empty");
        assert_eq!(error("# only a comment\n"), "line 1: the pipeline is empty");
        assert_eq!(error("~\n"), "line 1: the pipeline is empty");
        assert!(error(&format!("{}---\nsteps: []\n", one_step(""))).contains("more than one YAML document"));
        assert!(error("image: !!str busybox\nsteps: []\n").contains("YAML tags are not supported"));
        assert_eq!(error(&format!("image: a\n{}image: b\n", one_step(""))), "line 5: image: duplicate key");
        assert_eq!(error("[a]: b\nsteps: []\n"), "line 1: a key must be a string");
        // Nesting and alias expansion are bounded.
        let deep = format!("steps: {}{}\n", "[".repeat(DEPTH_MAX + 1), "]".repeat(DEPTH_MAX + 1));
        assert!(error(&deep).contains("nested deeper than 32 levels"), "{}", error(&deep));
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        bomb.push_str("steps: []\n");
        assert!(error(&bomb).contains("more than 20000 YAML nodes"), "{}", error(&bomb));
    }

    #[test]
    fn anchors_aliases_and_merge_keys_work() {
        let text = "\
steps:
  - <<: &defaults { image: golang, environment: { GOFLAGS: -mod=vendor }, timeout: 5m }
    name: build
    commands: [go build]
  - <<: *defaults
    name: test
    image: golang:tip
    commands: &cmds [go test]
  - name: again
    commands: *cmds
";
        let p = Pipeline::parse(text).unwrap();
        assert_eq!(p.steps[0].image.as_deref(), Some("golang"));
        assert_eq!(p.steps[0].timeout, Some(Duration::from_secs(300)));
        assert_eq!(p.steps[1].image.as_deref(), Some("golang:tip"), "a step's own key wins");
        assert_eq!(p.steps[1].environment["GOFLAGS"], "-mod=vendor");
        assert_eq!(p.steps[2].commands, ["go test"]);
        // Merged keys are checked like the step's own.
        let e = error("steps:\n  - <<: {imag: x}\n    name: a\n    commands: [x]\n");
        assert!(e.starts_with("line 2: steps[0].imag: unknown field"), "{e}");
        // Keys outside the format have no place to hold anchors either.
        let e = error(&format!("x-defaults: &d {{image: golang}}\n{}", one_step("")));
        assert!(e.starts_with("line 1: x-defaults: unknown field"), "{e}");
        assert!(error("steps:\n  - *nothing\n").starts_with("line 2: "));
    }

    #[test]
    fn the_digest_ignores_formatting() {
        let block = Pipeline::parse(EXAMPLE).unwrap();
        let reformatted = "\
# the same pipeline, written otherwise
steps: [ {name: 'build', timeout: \"60s\", environment: {KEY: \"value\"}, commands: [make, 'make test'], image: other},
         {commands: [./check.sh], name: check} ]
network: False
timeout: 600
image: \"busybox\"
";
        let flow = Pipeline::parse(reformatted).unwrap();
        assert_eq!(flow, block);
        assert_eq!(flow.digest(), block.digest());
        // An explicit default is the default.
        let implicit = Pipeline::parse(&one_step("")).unwrap();
        let explicit = Pipeline::parse(&format!("timeout: 1h\nnetwork: false\n{}", one_step(""))).unwrap();
        assert_eq!(implicit.digest(), explicit.digest());
    }

    #[test]
    fn the_digest_changes_with_every_field() {
        let base = Pipeline::parse(EXAMPLE).unwrap();
        let mut variants = vec![base.clone()];
        let mut change = |f: &dyn Fn(&mut Pipeline)| {
            let mut p = base.clone();
            f(&mut p);
            variants.push(p);
        };
        change(&|p| p.image = None);
        change(&|p| p.image = Some("busybox:1".into()));
        change(&|p| p.timeout += Duration::from_secs(1));
        change(&|p| p.timeout += Duration::from_millis(1));
        change(&|p| p.network = true);
        change(&|p| p.steps.reverse());
        change(&|p| p.steps.truncate(1));
        change(&|p| p.steps[0].name = "build2".into());
        change(&|p| p.steps[0].image = None);
        change(&|p| p.steps[1].image = Some("other".into()));
        change(&|p| p.steps[0].commands = vec!["make".into(), "make".into(), "test".into()]);
        change(&|p| p.steps[0].commands = vec!["make make test".into()]);
        change(&|p| p.steps[0].environment.clear());
        change(&|p| {
            p.steps[0].environment.insert("KEY".into(), "value2".into());
        });
        change(&|p| {
            p.steps[0].environment.insert("KEY2".into(), "value".into());
        });
        change(&|p| p.steps[0].timeout = None);
        change(&|p| p.steps[1].timeout = Some(Duration::from_secs(600)));
        let digests: HashSet<Digest> = variants.iter().map(Pipeline::digest).collect();
        assert_eq!(digests.len(), variants.len());
    }

    #[test]
    fn load_reads_the_file_or_falls_back_to_the_default() {
        let ws = TempDir::new().unwrap();
        let default = Pipeline::parse(&one_step("")).unwrap();
        assert_eq!(load(ws.path(), Some(&default)), Ok(default.clone()));
        assert_eq!(
            load(ws.path(), None),
            Err(PipelineError::Invalid("no .pbft-ci.yml and no default pipeline".into()))
        );
        std::fs::write(ws.path().join(FILE), EXAMPLE).unwrap();
        assert_eq!(load(ws.path(), Some(&default)), Pipeline::parse(EXAMPLE), "the file wins");
        std::fs::write(ws.path().join(FILE), "steps: []\n").unwrap();
        assert!(matches!(load(ws.path(), Some(&default)), Err(PipelineError::Invalid(_))), "no fallback then");
    }

    #[test]
    fn load_refuses_symlinks_directories_large_files_and_non_utf8() {
        let ws = TempDir::new().unwrap();
        let outside = TempDir::new().unwrap();
        let path = ws.path().join(FILE);
        // Even a link to a valid pipeline: the link is refused, never followed.
        std::fs::write(outside.path().join("p.yml"), EXAMPLE).unwrap();
        std::os::unix::fs::symlink(outside.path().join("p.yml"), &path).unwrap();
        let refused = Err(PipelineError::Invalid(".pbft-ci.yml is a symbolic link; it must be a regular file".into()));
        assert_eq!(load(ws.path(), None), refused);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", &path).unwrap();
        assert_eq!(load(ws.path(), None), refused);
        std::os::unix::fs::symlink("/nonexistent", ws.path().join("dangling")).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(ws.path().join("dangling"), &path).unwrap();
        assert_eq!(load(ws.path(), None), refused, "a dangling link is no absent file");
        std::fs::remove_file(&path).unwrap();

        std::fs::create_dir(&path).unwrap();
        assert_eq!(load(ws.path(), None), Err(PipelineError::Invalid(".pbft-ci.yml is not a regular file".into())));
        std::fs::remove_dir(&path).unwrap();

        let mut large = one_step("");
        large.push_str(&"#".repeat(FILE_BYTES_MAX as usize + 1 - large.len()));
        std::fs::write(&path, &large).unwrap();
        assert_eq!(
            load(ws.path(), None),
            Err(PipelineError::Invalid(".pbft-ci.yml is 65537 bytes, over the bound of 65536".into()))
        );
        large.pop();
        std::fs::write(&path, &large).unwrap();
        assert!(load(ws.path(), None).is_ok(), "at the bound");

        std::fs::write(&path, b"steps: [\xff]\n").unwrap();
        assert_eq!(load(ws.path(), None), Err(PipelineError::Invalid(".pbft-ci.yml is not UTF-8".into())));
    }
}
