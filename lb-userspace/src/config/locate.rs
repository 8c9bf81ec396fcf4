//! Where a key sits in the config text: spans of toml's document tree → line and column,
//! and key paths → spans.
//!
//! Owns: [`Doc`] and the span/path lookups. Must not touch: what a key means.

use std::ops::Range;

use serde::Deserialize;
use toml::{
    Spanned,
    de::{DeValue, ValueDeserializer},
};

use super::LocatedError;
use crate::model::FieldError;

/// The parsed document, for turning spans and key paths into lines.
pub struct Doc<'a> {
    pub text: &'a str,
    pub root: Spanned<DeValue<'a>>,
}

impl Doc<'_> {
    pub fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> LocatedError {
        let (line, column) = line_col(self.text, span.start);
        LocatedError {
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A field error of the table at `prefix` (`daemon`, `service[3]`): located at the
    /// key's value, or at the nearest enclosing table when the key is absent.
    pub fn field_error(&self, prefix: &str, e: FieldError) -> LocatedError {
        let key = format!("{prefix}.{}", e.field);
        self.error(span_of_path(&self.root, &key), &key, e.message)
    }

    /// A syntax or serde error from toml: the key is the path of the deepest key or
    /// value holding the error's span.
    pub fn toml_error(&self, e: &toml::de::Error) -> LocatedError {
        let span = e.span().unwrap_or(0..0);
        let key = path_at(&self.root, &span, "").unwrap_or_else(|| {
            // Not in the tree: e.g. the second of two equal keys, whose span is the key.
            let text = self.text.get(span.clone()).unwrap_or("").trim();
            if text.is_empty() || text.contains('\n') {
                "(syntax)".to_string()
            } else {
                text.to_string()
            }
        });
        self.error(span, &key, e.message())
    }

    /// Deserializes one table of the document, recording a failure in `errors`.
    pub fn deserialize<'de, T: Deserialize<'de>>(
        &self,
        value: &Spanned<DeValue<'de>>,
        errors: &mut Vec<LocatedError>,
    ) -> Option<T> {
        T::deserialize(ValueDeserializer::from(value.clone()))
            .map_err(|e| errors.push(self.toml_error(&e)))
            .ok()
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The dotted path (`service[0].backend[1].weight`) of the deepest key or value under
/// `node` (at path `here`) whose span holds `span`. Searches the whole tree: a table
/// made by a `[header]` has the header as its span, not its keys.
fn path_at(node: &Spanned<DeValue<'_>>, span: &Range<usize>, here: &str) -> Option<String> {
    match node.get_ref() {
        DeValue::Table(table) => {
            for (key, value) in table.iter() {
                let key_name: &str = key.get_ref().as_ref();
                let path = if here.is_empty() {
                    key_name.to_string()
                } else {
                    format!("{here}.{key_name}")
                };
                if let Some(found) = path_at(value, span, &path) {
                    return Some(found);
                }
                if contains(&key.span(), span) {
                    return Some(path);
                }
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(found) = path_at(item, span, &format!("{here}[{i}]")) {
                    return Some(found);
                }
            }
        }
        _ => {}
    }
    (!here.is_empty() && contains(&node.span(), span)).then(|| here.to_string())
}

/// The span of the value at a dotted path, or of its deepest existing ancestor.
fn span_of_path(root: &Spanned<DeValue<'_>>, path: &str) -> Range<usize> {
    let mut node = root;
    for part in path.split('.') {
        // `backend[1]` is key `backend`, then index 1.
        let mut pieces = part.split('[');
        let key = pieces.next().unwrap_or("");
        let indices = pieces.map(|p| p.trim_end_matches(']').parse::<usize>().ok());
        let next = match node.get_ref() {
            DeValue::Table(t) => t.get(key),
            _ => None,
        };
        let Some(mut next) = next else { break };
        for index in indices {
            let item = match (next.get_ref(), index) {
                (DeValue::Array(items), Some(i)) => items.get(i),
                _ => None,
            };
            match item {
                Some(item) => next = item,
                None => return next.span(),
            }
        }
        node = next;
    }
    node.span()
}
