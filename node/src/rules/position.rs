//! Where in the rules file an error points: lines from byte offsets, and the field that holds
//! the span of an error the TOML layer raised (its message names the source text, not a field).

use super::RulesError;
use serde::Deserialize;
use toml::Spanned;

/// Byte offset -> 1-based line, in O(log lines) per question after one O(n) pass.
pub(super) struct LineIndex {
    /// Offsets of every '\n' in the text.
    newlines: Vec<usize>,
}

impl LineIndex {
    pub(super) fn new(text: &str) -> Self {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }
}

pub(super) fn from_toml_error(text: &str, lines: &LineIndex, e: &toml::de::Error) -> RulesError {
    let line = e.span().map(|s| lines.line(s.start)).unwrap_or(0);
    // Keep the first line of toml's message: the rest repeats the source text.
    let message = e
        .message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .to_string();
    // The span is the offending text (a value, sometimes one character of a key), not a field
    // name: name the field that holds it, or none rather than a fragment of the source.
    let field = e
        .span()
        .and_then(|s| field_at(text, s.start))
        // Every field of this file has a short path; a longer one is some other document's
        // (200 dotted keys), and echoing it would bury the message.
        .filter(|f| f.len() <= MAX_FIELD_LEN)
        .unwrap_or_default();
    RulesError {
        line,
        field,
        message,
    }
}

/// The longest field path a TOML error names (`service[49999].backend[9].expect_status` is 40).
const MAX_FIELD_LEN: usize = 80;

/// The dotted path of the value or key at byte `offset`, for an error the TOML layer raised.
///
/// A file with a type error (`port = 65536`, `weight = "x"`) is still valid TOML: read it
/// again as a tree of spans and take the innermost key or value holding the offset, which
/// gives the full path (`service[0].port`). A file that is not valid TOML (syntax, duplicate
/// keys, a number over i64) has no tree: fall back to the key of a `key = value` line.
fn field_at(text: &str, offset: usize) -> Option<String> {
    match toml::from_str::<Node>(text) {
        Ok(root) => {
            let mut best: Option<(usize, String)> = None;
            innermost(&root, offset, String::new(), &mut best);
            best.map(|(_, path)| path).filter(|p| !p.is_empty())
        }
        Err(_) => key_on_line(text, offset),
    }
}

/// A TOML document as nested keys and values with their spans, and nothing else.
enum Node {
    Leaf,
    /// Keys with their own spans (an unknown-key error points at the key).
    Table(Vec<(Spanned<String>, Spanned<Node>)>),
    Array(Vec<Spanned<Node>>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Node::Table(entries))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Keeps in `best` the shortest-spanned key or value under `node` that holds `offset`.
fn innermost(node: &Node, offset: usize, path: String, best: &mut Option<(usize, String)>) {
    fn consider(
        best: &mut Option<(usize, String)>,
        offset: usize,
        span: std::ops::Range<usize>,
        path: &str,
    ) {
        let holds = span.start <= offset && offset < span.end.max(span.start + 1);
        // `<=`: a table and its array element can share a span; the element, visited later,
        // is the more precise name (`service[0]`, not `service`).
        if holds && best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
            *best = Some((span.len(), path.to_string()));
        }
    }
    match node {
        Node::Leaf => {}
        Node::Table(entries) => {
            for (key, value) in entries {
                let child = if path.is_empty() {
                    key.get_ref().clone()
                } else {
                    format!("{path}.{}", key.get_ref())
                };
                consider(best, offset, key.span(), &child);
                consider(best, offset, value.span(), &child);
                innermost(value.get_ref(), offset, child, best);
            }
        }
        Node::Array(items) => {
            for (k, item) in items.iter().enumerate() {
                let child = format!("{path}[{k}]");
                consider(best, offset, item.span(), &child);
                innermost(item.get_ref(), offset, child, best);
            }
        }
    }
}

/// The key of the `key = value` line holding `offset`, if that line starts with a bare
/// (possibly dotted) key; anything else (a header, a continuation line) names no field.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    // Bytes, not `text[..offset]`: an offset inside a multi-byte character must not panic.
    let offset = offset.min(text.len());
    let start = text.as_bytes()[..offset]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |nl| nl + 1);
    let end = text[start..].find('\n').map_or(text.len(), |nl| start + nl);
    let (key, _) = text[start..end].split_once('=')?;
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    let bare = |p: &&str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    parts.iter().all(bare).then(|| parts.join("."))
}
