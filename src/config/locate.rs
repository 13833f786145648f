//! Where keys sit in the config text: key paths and their line numbers.
//!
//! Validation works on the deserialized [`Config`](super::Config), which has
//! no positions; it names what is wrong by a [`KeyPath`] instead. A
//! [`SourceMap`] built from the same text turns a path back into a line
//! (falling back to the nearest enclosing table when the key is absent) and
//! turns a byte offset from a toml error into the path of the key there.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a [`KeyPath`]: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A key in a table.
    Key(String),
    /// A position in an array (or array of tables).
    Index(usize),
}

/// A dotted path to a config key, displayed as `service[1].max_ttl`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    /// The path of one top-level key.
    pub fn root(key: &str) -> KeyPath {
        KeyPath(vec![Segment::Key(key.to_owned())])
    }

    /// This path extended by a table key.
    pub fn key(&self, key: &str) -> KeyPath {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_owned()));
        KeyPath(segments)
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> KeyPath {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        KeyPath(segments)
    }

    /// The path of the table holding this key; empty for a top-level key.
    pub fn parent(&self) -> KeyPath {
        let mut segments = self.0.clone();
        segments.pop();
        KeyPath(segments)
    }

    /// The table this path names, as an operator would spell it: `[proxy]`,
    /// `service[1]`, or `the top level`.
    pub fn table_name(&self) -> String {
        if self.0.is_empty() {
            "the top level".to_owned()
        } else if self.0.iter().all(|s| matches!(s, Segment::Key(_))) {
            format!("[{self}]")
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()
        .get(..end)
        .map_or(0, |head| head.iter().filter(|&&b| b == b'\n').count())
        + 1
}

/// The parsed shape of the config text, with the span of every key and value.
pub struct SourceMap<'t> {
    text: &'t str,
    root: Spanned<DeTable<'t>>,
}

impl<'t> SourceMap<'t> {
    /// Parses `text` for positions; `None` when it is not valid TOML.
    pub fn new(text: &'t str) -> Option<SourceMap<'t>> {
        DeTable::parse(text)
            .ok()
            .map(|root| SourceMap { text, root })
    }

    /// The line of the key `path` names, or of the nearest enclosing table
    /// that exists (line 1 when nothing on the path exists).
    pub fn line(&self, path: &KeyPath) -> usize {
        let mut offset = 0;
        let mut node = Node::Table(self.root.get_ref());
        for segment in &path.0 {
            let found = match (segment, node) {
                (Segment::Key(key), Node::Table(table)) => table
                    .get_key_value(key.as_str())
                    .map(|(k, v)| (k.span().start, v)),
                (Segment::Index(index), Node::Array(items)) => {
                    items.get(*index).map(|v| (v.span().start, v))
                }
                _ => None,
            };
            let Some((start, value)) = found else { break };
            offset = start;
            node = Node::of(value.get_ref());
        }
        line_of(self.text, offset)
    }

    /// The path of the innermost key whose key or value covers `span`
    /// (empty when none does).
    ///
    /// Every table is searched, because a table's own span covers only its
    /// `[header]`, not the keys below it.
    pub fn path_at(&self, span: &Range<usize>) -> KeyPath {
        let mut path = KeyPath::default();
        find_path(Node::Table(self.root.get_ref()), span, &mut path);
        path
    }
}

/// Depth-first search under `node` for the innermost key covering `span`;
/// on success `path` holds it and the result is true.
fn find_path(node: Node<'_, '_>, span: &Range<usize>, path: &mut KeyPath) -> bool {
    match node {
        Node::Table(table) => table.iter().any(|(key, value)| {
            let key_covers = covers(&key.span(), span);
            descend(
                Segment::Key(key.get_ref().to_string()),
                key_covers,
                value,
                span,
                path,
            )
        }),
        Node::Array(items) => items
            .iter()
            .enumerate()
            .any(|(index, value)| descend(Segment::Index(index), false, value, span, path)),
        Node::Leaf => false,
    }
}

/// Tries `segment`: found if something inside `value` covers `span`, or the
/// key (`key_covers`) or the value itself does; otherwise `path` is restored.
fn descend(
    segment: Segment,
    key_covers: bool,
    value: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &mut KeyPath,
) -> bool {
    path.0.push(segment);
    let found = find_path(Node::of(value.get_ref()), span, path)
        || key_covers
        || covers(&value.span(), span);
    if !found {
        path.0.pop();
    }
    found
}

/// A value seen as something a path can descend into.
#[derive(Clone, Copy)]
enum Node<'a, 't> {
    Table(&'a DeTable<'t>),
    Array(&'a [Spanned<DeValue<'t>>]),
    Leaf,
}

impl<'a, 't> Node<'a, 't> {
    fn of(value: &'a DeValue<'t>) -> Node<'a, 't> {
        match value {
            DeValue::Table(table) => Node::Table(table),
            DeValue::Array(items) => Node::Array(items),
            _ => Node::Leaf,
        }
    }
}

/// Whether `outer` contains `inner`; an empty `inner` (toml's "somewhere in
/// the document") is inside nothing.
fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && inner.start < inner.end
}
