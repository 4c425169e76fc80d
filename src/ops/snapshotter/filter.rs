//! containerd's filter syntax, as its snapshots API uses it for `List`
//! (containerd's `filters` package): a filter is selectors joined by `,`
//! (all must hold); a request's filters are alternatives (any may hold).
//!
//! ```text
//! selector  := fieldpath [ op value ]      op: == != ~=
//! fieldpath := field ( "." field )*        field: [A-Za-z_][A-Za-z0-9_]* or "quoted"
//! value     := "quoted" | /regexp/ | bare  bare: up to the next , or space
//! ```
//! A selector without an operator holds when the field is present. The
//! fields of a snapshot are `name`, `parent`, `kind` (`active`, `view`,
//! `committed`) and `labels.KEY`. `~=` (a regular expression) is refused:
//! containerd's own clients do not send it to snapshotters.

use crate::error::{Error, Result};
use crate::store::model::SnapshotRecord;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// One filter: every selector must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter(Vec<Selector>);

/// A request's filters: any may hold; none at all means everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filters(Vec<Filter>);

impl Filters {
    pub fn parse(texts: &[String]) -> Result<Filters> {
        let mut out = Vec::new();
        for t in texts {
            if t.trim().is_empty() {
                continue;
            }
            out.push(parse_filter(t)?);
        }
        Ok(Filters(out))
    }

    pub fn matches(&self, s: &SnapshotRecord) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.0.iter().all(|sel| sel.holds(s)))
    }
}

impl Selector {
    fn holds(&self, s: &SnapshotRecord) -> bool {
        let value = field(s, &self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(want) => value.as_deref() == Some(want.as_str()),
            Op::NotEqual(want) => value.as_deref() != Some(want.as_str()),
        }
    }
}

/// The value of a field path of a snapshot, if it has one. As containerd's
/// own snapshotters have it: name, kind and parent are always present (a
/// snapshot without a parent has parent ""); a label only if it is set.
fn field(s: &SnapshotRecord, path: &[String]) -> Option<String> {
    match path {
        [f] if f == "name" => Some(s.key.clone()),
        [f] if f == "parent" => Some(s.parent.clone().unwrap_or_default()),
        [f] if f == "kind" => Some(s.kind.as_str().to_string()),
        [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
            s.labels.get(&rest.join(".")).cloned()
        }
        _ => None,
    }
}

fn bad(text: &str, why: &str) -> Error {
    Error::Invalid(format!("filter {:?}: {why}", text))
}

struct Lexer<'a> {
    text: &'a str,
    rest: &'a str,
}

impl<'a> Lexer<'a> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, s: &str) -> bool {
        self.skip_space();
        if let Some(r) = self.rest.strip_prefix(s) {
            self.rest = r;
            true
        } else {
            false
        }
    }

    /// A quoted string ("..." with \" and \\ escapes) after its opening quote.
    fn quoted(&mut self, close: char) -> Result<String> {
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    }),
                    None => break,
                },
                c if c == close => {
                    self.rest = &self.rest[i + c.len_utf8()..];
                    return Ok(out);
                }
                c => out.push(c),
            }
        }
        Err(bad(self.text, "unterminated quote"))
    }

    fn field(&mut self) -> Result<String> {
        self.skip_space();
        if self.eat("\"") {
            return self.quoted('"');
        }
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return Err(bad(self.text, "expected a field name"));
        }
        let (f, r) = self.rest.split_at(end);
        self.rest = r;
        Ok(f.to_string())
    }

    fn value(&mut self) -> Result<String> {
        self.skip_space();
        if self.eat("\"") {
            return self.quoted('"');
        }
        let end = self
            .rest
            .find(|c: char| c == ',' || c.is_whitespace())
            .unwrap_or(self.rest.len());
        let (v, r) = self.rest.split_at(end);
        self.rest = r;
        Ok(v.to_string())
    }
}

fn parse_filter(text: &str) -> Result<Filter> {
    let mut lx = Lexer { text, rest: text };
    let mut selectors = Vec::new();
    loop {
        let mut path = vec![lx.field()?];
        while lx.eat(".") {
            path.push(lx.field()?);
        }
        let op = if lx.eat("==") {
            Op::Equal(lx.value()?)
        } else if lx.eat("!=") {
            Op::NotEqual(lx.value()?)
        } else if lx.eat("~=") {
            return Err(bad(text, "regular expressions (~=) are not supported"));
        } else {
            Op::Present
        };
        selectors.push(Selector { path, op });
        if lx.eat(",") {
            continue;
        }
        lx.skip_space();
        if !lx.rest.is_empty() {
            return Err(bad(text, &format!("unexpected {:?}", lx.rest)));
        }
        return Ok(Filter(selectors));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::{SnapshotKind, Stamp};

    fn snap(
        key: &str,
        parent: Option<&str>,
        kind: SnapshotKind,
        labels: &[(&str, &str)],
    ) -> SnapshotRecord {
        SnapshotRecord {
            key: key.into(),
            id: 1,
            kind,
            parent: parent.map(Into::into),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created: Stamp { secs: 0, nanos: 0 },
            updated: Stamp { secs: 0, nanos: 0 },
            volume: "ctr.1".into(),
            owns_volume: true,
            creating: false,
            usage: None,
            committed_from: None,
        }
    }

    fn f(texts: &[&str]) -> Filters {
        Filters::parse(&texts.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn the_unpackers_adoption_filter_matches_label_and_parent() {
        let chain = "sha256:0123abcd";
        let s = snap(
            "default/4/sha256:0123abcd",
            Some("default/2/sha256:beef"),
            SnapshotKind::Committed,
            &[("containerd.io/snapshot.ref", chain)],
        );
        let filter = format!(
            r#"labels."containerd.io/snapshot.ref"=={chain},parent=="default/2/sha256:beef""#
        );
        assert!(f(&[&filter]).matches(&s));
        let other_parent = format!(r#"labels."containerd.io/snapshot.ref"=={chain},parent=="x""#);
        assert!(!f(&[&other_parent]).matches(&s));
    }

    #[test]
    fn filters_are_alternatives_and_selectors_conjunctions() {
        let s = snap("k", None, SnapshotKind::Active, &[("a", "1")]);
        assert!(f(&[]).matches(&s));
        assert!(f(&["kind==active"]).matches(&s));
        assert!(!f(&["kind==committed"]).matches(&s));
        assert!(f(&["kind==committed", "name==k"]).matches(&s));
        assert!(!f(&["kind==active,name==x"]).matches(&s));
        assert!(f(&["labels.a"]).matches(&s));
        assert!(!f(&["labels.b"]).matches(&s));
        assert!(f(&["labels.b!=2"]).matches(&s));
        // containerd's suite: a root's parent is "", present and equal to "".
        assert!(f(&["parent"]).matches(&s));
        assert!(f(&[r#"parent=="""#]).matches(&s));
        assert!(!f(&[r#"parent!="""#]).matches(&s));
        assert!(f(&[r#"name=="k""#]).matches(&s));
    }

    #[test]
    fn bad_filters_are_invalid_arguments() {
        for t in ["==x", "name==\"open", "kind~=act.*", "name==a b"] {
            let r = Filters::parse(&[t.to_string()]);
            assert!(matches!(r, Err(Error::Invalid(_))), "{t}: {r:?}");
        }
    }
}
