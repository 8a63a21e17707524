//! The pipeline file (`Pipeline::parse`): YAML text in, a validated pipeline
//! or an error out.
//!
//! Properties, besides never panicking:
//! - an error is `Invalid` (a file is never a fault of the machine) and
//!   starts with `line N: ` for a line N of the file (1 ≤ N ≤ its lines + 1);
//! - a pipeline that parses holds its invariants (1 to `STEPS_MAX` steps with
//!   unique, well-formed names, commands, variable names, images, timeouts);
//! - written back as YAML, block style and flow style, every string
//!   double-quoted, it parses to the same pipeline with the same digest.

use std::fmt::Write as _;
use std::time::Duration;

use pbft_node::ci::pipeline::{Pipeline, PipelineError, Step, IMAGE_BYTES_MAX, STEP_NAME_BYTES_MAX, TIMEOUT_MAX};
use pbft_node::wire::limits::STEPS_MAX;

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = Pipeline::parse(&text);
    if crate::verbose() {
        eprintln!("pipeline: {:?}", parsed.as_ref().map(|p| p.steps.len()));
    }
    match parsed {
        Ok(p) => {
            invariants(&p);
            for (style, yaml) in [("block", block(&p)), ("flow", flow(&p))] {
                let again = Pipeline::parse(&yaml).unwrap_or_else(|e| {
                    panic!("the pipeline written back ({style} style) does not parse: {e}\n{yaml}")
                });
                assert_eq!(again, p, "written back ({style} style), the pipeline changed:\n{yaml}");
                assert_eq!(again.digest(), p.digest());
            }
        }
        Err(PipelineError::Fault(e)) => panic!("parsing text reported a fault: {e}"),
        Err(PipelineError::Invalid(e)) => {
            let line = line_of(&e).unwrap_or_else(|| panic!("an error without its line: {e:?}"));
            // YAML breaks lines at \n, \r and \r\n: an upper bound.
            let lines = text.bytes().filter(|b| matches!(b, b'\n' | b'\r')).count() + 1;
            assert!((1..=lines + 1).contains(&line), "line {line} of a {lines}-line file: {e:?}");
        }
    }
}

/// N of an error that starts with `line N: `.
pub fn line_of(error: &str) -> Option<usize> {
    let rest = error.strip_prefix("line ")?;
    let (n, _) = rest.split_once(": ")?;
    n.parse().ok()
}

fn image_ok(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= IMAGE_BYTES_MAX
        && !image.starts_with('-')
        && !image.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn timeout_ok(t: Duration) -> bool {
    !t.is_zero() && t <= TIMEOUT_MAX && t.subsec_nanos() == 0
}

fn invariants(p: &Pipeline) {
    assert!((1..=STEPS_MAX).contains(&p.steps.len()), "{} steps", p.steps.len());
    assert!(p.image.as_deref().is_none_or(image_ok), "image {:?}", p.image);
    assert!(timeout_ok(p.timeout), "timeout {:?}", p.timeout);
    let mut names = std::collections::HashSet::new();
    for (i, s) in p.steps.iter().enumerate() {
        assert!(names.insert(&s.name), "step name {:?} twice", s.name);
        let name_ok = (1..=STEP_NAME_BYTES_MAX).contains(&s.name.len())
            && s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        assert!(name_ok, "step name {:?}", s.name);
        assert!(s.image.as_deref().is_none_or(image_ok), "step image {:?}", s.image);
        assert!(!s.commands.is_empty(), "a step without commands");
        for c in &s.commands {
            assert!(!c.trim().is_empty() && !c.contains('\0'), "command {c:?}");
        }
        for (k, v) in &s.environment {
            let mut b = k.bytes();
            let ok = b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
                && b.all(|c| c.is_ascii_alphanumeric() || c == b'_');
            assert!(ok && !v.contains('\0'), "variable {k:?}={v:?}");
        }
        assert!(s.timeout.is_none_or(timeout_ok), "step timeout {:?}", s.timeout);
        assert!(p.step_timeout(i) <= p.timeout);
        assert_eq!(p.step_image(i), s.image.as_deref().or(p.image.as_deref()));
    }
}

/// A YAML double-quoted scalar: printable ASCII as it is, everything else
/// escaped, so no character of the value is read as syntax or folded.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xffff => write!(out, "\\u{:04x}", c as u32).expect("a String"),
            c => write!(out, "\\U{:08x}", c as u32).expect("a String"),
        }
    }
    out.push('"');
    out
}

fn block(p: &Pipeline) -> String {
    let mut y = String::new();
    if let Some(image) = &p.image {
        writeln!(y, "image: {}", quoted(image)).unwrap();
    }
    writeln!(y, "timeout: {}\nnetwork: {}\nsteps:", p.timeout.as_secs(), p.network).unwrap();
    for s in &p.steps {
        writeln!(y, "  - name: {}", quoted(&s.name)).unwrap();
        if let Some(image) = &s.image {
            writeln!(y, "    image: {}", quoted(image)).unwrap();
        }
        writeln!(y, "    commands:").unwrap();
        for c in &s.commands {
            writeln!(y, "      - {}", quoted(c)).unwrap();
        }
        if !s.environment.is_empty() {
            writeln!(y, "    environment:").unwrap();
            for (k, v) in &s.environment {
                writeln!(y, "      {}: {}", quoted(k), quoted(v)).unwrap();
            }
        }
        if let Some(t) = s.timeout {
            writeln!(y, "    timeout: {}s", t.as_secs()).unwrap();
        }
    }
    y
}

fn flow_step(s: &Step) -> String {
    let mut fields = vec![format!("\"name\": {}", quoted(&s.name))];
    if let Some(image) = &s.image {
        fields.push(format!("\"image\": {}", quoted(image)));
    }
    let commands: Vec<String> = s.commands.iter().map(|c| quoted(c)).collect();
    fields.push(format!("\"commands\": [{}]", commands.join(", ")));
    let env: Vec<String> = s.environment.iter().map(|(k, v)| format!("{}: {}", quoted(k), quoted(v))).collect();
    fields.push(format!("\"environment\": {{{}}}", env.join(", ")));
    if let Some(t) = s.timeout {
        fields.push(format!("\"timeout\": {}", t.as_secs()));
    }
    format!("{{{}}}", fields.join(", "))
}

fn flow(p: &Pipeline) -> String {
    let mut fields = Vec::new();
    if let Some(image) = &p.image {
        fields.push(format!("\"image\": {}", quoted(image)));
    }
    // Another spelling of the same timeout than the block style's.
    let secs = p.timeout.as_secs();
    let timeout = match secs {
        s if s % 3600 == 0 => format!("\"{}h\"", s / 3600),
        s if s % 60 == 0 => format!("\"{}m\"", s / 60),
        s => format!("{s}"),
    };
    fields.push(format!("\"timeout\": {timeout}"));
    fields.push(format!("\"network\": {}", p.network));
    let steps: Vec<String> = p.steps.iter().map(flow_step).collect();
    fields.push(format!("\"steps\": [{}]", steps.join(", ")));
    format!("{{{}}}\n", fields.join(", "))
}
