//! Where a key is in the config file: a key path as the validation
//! errors name it (`github.reconcile_interval`, `pool[1].memory_mib`,
//! `pool[0].allow[2]`) to the line and column of its value, from a second,
//! spanned parse of the same text (`toml::de::DeTable`).

use toml::de::{DeTable, DeValue};

use super::error::Position;

/// The text's spanned document, for looking keys up.
pub(crate) struct Locator<'t> {
    text: &'t str,
    root: Option<DeValue<'t>>,
}

impl<'t> Locator<'t> {
    /// `text` must be the file's content (already parsed once, so valid
    /// TOML; if not, nothing is found).
    pub(crate) fn new(text: &'t str) -> Self {
        let root = DeTable::parse(text)
            .ok()
            .map(|t| DeValue::Table(t.into_inner()));
        Self { text, root }
    }

    /// The position of `key`'s value; for a key the file does not have
    /// (a missing value), that of the nearest enclosing table that it has.
    pub(crate) fn find(&self, key: &str) -> Option<Position> {
        let mut value = self.root.as_ref()?;
        let mut best = None;
        for step in steps(key) {
            let next = match step {
                Step::Key(k) => value.get(k),
                Step::Index(i) => value.get(i),
            };
            let Some(next) = next else { break };
            let span = next.span();
            // A table made by a header ([github], [[pool]]) may have no
            // span of its own: keep the enclosing one.
            if !span.is_empty() || span.start > 0 {
                best = Some(span.start);
            }
            value = next.get_ref();
        }
        best.map(|offset| position(self.text, offset))
    }
}

enum Step<'k> {
    Key(&'k str),
    Index(usize),
}

/// `pool[1].allow[0].cidr` -> pool, 1, allow, 0, cidr.
fn steps(key: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Step::Index(i));
            }
            rest = after.trim_start_matches('[');
        }
    }
    out
}

/// Line and column (1-based, in characters) of byte `offset` in `text`.
pub(crate) fn position(text: &str, offset: usize) -> Position {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "a = 1\n\n[github]\napp_id = 0\nreconcile_interval = \"0s\"\n\n[[pool]]\nname = \"x\"\n\n[[pool]]\nname = \"y\"\nmemory_mib = 64\nallow = [{ cidr = \"10.0.0.1/8\" }, { cidr = \"é\" }]\n";

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn keys_map_to_their_values() {
        let l = Locator::new(TEXT);
        assert_eq!(l.find("a"), at(1, 5));
        assert_eq!(l.find("github.app_id"), at(4, 10));
        assert_eq!(l.find("github.reconcile_interval"), at(5, 22));
        assert_eq!(l.find("pool[0].name"), at(8, 8));
        assert_eq!(l.find("pool[1].memory_mib"), at(12, 14));
        assert_eq!(l.find("pool[1].allow[1].cidr"), at(13, 44));
    }

    #[test]
    fn a_missing_key_points_at_what_encloses_it() {
        let l = Locator::new(TEXT);
        assert_eq!(l.find("pool[1].labels"), l.find("pool[1]"));
        assert!(l.find("pool[1]").is_some());
        assert_eq!(l.find("nothing"), None);
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(position("é = 1", 5), Position { line: 1, column: 5 });
        assert_eq!(position("a\nbc", 3), Position { line: 2, column: 2 });
    }
}
