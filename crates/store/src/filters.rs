//! containerd's filter syntax, shared by every List call that takes `filters`.
//!
//! A filter string is a comma-separated AND of selectors `<fieldpath>[<op><value>]`; several
//! filter strings are an OR; the empty string matches everything. Field paths are dot-separated
//! fields, each either a bare word or a quoted string (`labels."a.b/c"`). Operators: `==`, `!=`,
//! `~=` (regular expression) and `@=` (substring); a selector without an operator tests presence.
//! Quotes are `"`, `/` or `|` with Go-style escapes, so regular expressions read naturally:
//! `name~=/^foo\./`. Regular expressions are RE2 syntax as in Go's `regexp` (through `regex-lite`:
//! the same syntax without Unicode classes such as `\pL`; `\w`, `\d` and `\s` are ASCII, as in Go).

use std::fmt;

use regex_lite::Regex;

/// Resolves a field path on the object being filtered: `Some(value)` when present.
pub trait Adaptor {
    /// The value at `path`, or `None` when the field is absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

impl<F: Fn(&[String]) -> Option<String>> Adaptor for F {
    fn field(&self, path: &[String]) -> Option<String> {
        self(path)
    }
}

/// A parse error, pointing at the offending position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    input: String,
    pos: usize,
    msg: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pos < self.input.len() {
            let (before, rest) = self.input.split_at(self.pos);
            let mut chars = rest.chars();
            let at = chars.next().map(String::from).unwrap_or_default();
            let after: String = chars.collect();
            write!(f, "parse error: [{before} >|{at}|< {after}]: {}", self.msg)
        } else {
            write!(f, "parse error: [{}]: {}", self.input, self.msg)
        }
    }
}

impl std::error::Error for FilterError {}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
    Contains(String),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, a: &dyn Adaptor) -> bool {
        let v = a.field(&self.path);
        match &self.op {
            Op::Present => v.is_some(),
            Op::Equal(want) => v.as_deref() == Some(want.as_str()),
            Op::NotEqual(want) => v.as_deref().unwrap_or("") != want,
            Op::Matches(re) => re.is_match(v.as_deref().unwrap_or("")),
            Op::Contains(sub) => v.as_deref().unwrap_or("").contains(sub.as_str()),
        }
    }
}

/// A parsed set of filters: matches when any of its filter strings matches.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// OR of ANDs. Empty means "match everything".
    any: Vec<Vec<Selector>>,
}

impl Filter {
    /// A filter that matches everything.
    pub fn always() -> Filter {
        Filter::default()
    }

    /// True when the object behind `a` passes.
    pub fn matches(&self, a: &dyn Adaptor) -> bool {
        self.any.is_empty() || self.any.iter().any(|all| all.iter().all(|s| s.matches(a)))
    }
}

/// Parses one filter string (the AND of its selectors).
pub fn parse(s: &str) -> Result<Filter, FilterError> {
    if s.is_empty() {
        return Ok(Filter::always());
    }
    let mut p = Parser {
        sc: Scanner::new(s),
    };
    let sels = p.selectors()?;
    Ok(Filter { any: vec![sels] })
}

/// Parses filter strings into their OR. No strings, or an empty one, matches everything.
pub fn parse_all<S: AsRef<str>>(ss: &[S]) -> Result<Filter, FilterError> {
    let mut any = Vec::new();
    for s in ss {
        let f = parse(s.as_ref())?;
        if f.any.is_empty() {
            return Ok(Filter::always());
        }
        any.extend(f.any);
    }
    Ok(Filter { any })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Eof,
    Quoted(String),
    Value(String),
    Field(String),
    Sep(char),
    Operator(String),
    Illegal(String),
    Other(char),
}

struct Scanner<'a> {
    input: &'a str,
    pos: usize,
    value_next: bool,
}

fn is_field_char(c: char) -> bool {
    c == '-' || c == '_' || c.is_ascii_alphanumeric()
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

impl<'a> Scanner<'a> {
    fn new(input: &'a str) -> Self {
        Scanner {
            input,
            pos: 0,
            value_next: false,
        }
    }

    fn peek_char(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    /// The next character that is not white space (white space between tokens is insignificant).
    fn peek_token_char(&self) -> Option<char> {
        self.input[self.pos..].chars().find(|c| !c.is_whitespace())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Returns the token and the byte position it starts at.
    fn scan(&mut self) -> (usize, Tok) {
        while self.peek_char().is_some_and(char::is_whitespace) {
            self.bump();
        }
        let start = self.pos;
        let Some(c) = self.bump() else {
            return (start, Tok::Eof);
        };
        if c == '\0' {
            return (start, Tok::Illegal("unexpected null".into()));
        }
        if is_quote(c) {
            return match self.scan_quoted(c) {
                Ok(()) => (start, Tok::Quoted(self.input[start..self.pos].to_string())),
                Err(m) => (start, Tok::Illegal(m)),
            };
        }
        if c == ',' || c == '.' {
            self.value_next = false;
            return (start, Tok::Sep(c));
        }
        if matches!(c, '=' | '!' | '~' | '@') {
            while self
                .peek_char()
                .is_some_and(|c| matches!(c, '=' | '!' | '~' | '@'))
            {
                self.bump();
            }
            self.value_next = true;
            return (
                start,
                Tok::Operator(self.input[start..self.pos].to_string()),
            );
        }
        if self.value_next {
            while self.peek_char().is_some_and(is_value_char) {
                self.bump();
            }
            self.value_next = false;
            return (start, Tok::Value(self.input[start..self.pos].to_string()));
        }
        if is_field_char(c) {
            while self.peek_char().is_some_and(is_field_char) {
                self.bump();
            }
            return (start, Tok::Field(self.input[start..self.pos].to_string()));
        }
        (start, Tok::Other(c))
    }

    fn scan_quoted(&mut self, quote: char) -> Result<(), String> {
        loop {
            match self.bump() {
                None | Some('\n') => return Err("quoted literal not terminated".into()),
                Some('\\') => {
                    if self.bump().is_none() {
                        return Err("quoted literal not terminated".into());
                    }
                }
                Some(c) if c == quote => return Ok(()),
                Some(_) => {}
            }
        }
    }
}

/// Decodes a quoted literal (`"…"`, `/…/` or `|…|`) with Go's escapes.
fn unquote(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    let quote = chars.next().ok_or("empty literal")?;
    if s.len() < 2 || !s.ends_with(quote) {
        return Err("quote syntax error".into());
    }
    let body = &s[quote.len_utf8()..s.len() - quote.len_utf8()];
    let mut out = String::new();
    let mut it = body.chars().peekable();
    while let Some(c) = it.next() {
        if c == quote {
            return Err("quote syntax error".into());
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = it.next().ok_or("quote syntax error")?;
        let hex =
            |it: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize| -> Result<u32, String> {
                let mut v = 0u32;
                for _ in 0..n {
                    let d = it
                        .next()
                        .and_then(|c| c.to_digit(16))
                        .ok_or("invalid escape")?;
                    v = v * 16 + d;
                }
                Ok(v)
            };
        match e {
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '\\' => out.push('\\'),
            'x' => out.push(char::from_u32(hex(&mut it, 2)?).ok_or("invalid escape")?),
            'u' => out.push(char::from_u32(hex(&mut it, 4)?).ok_or("invalid escape")?),
            'U' => out.push(char::from_u32(hex(&mut it, 8)?).ok_or("invalid escape")?),
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    let d = it
                        .next()
                        .and_then(|c| c.to_digit(8))
                        .ok_or("invalid escape")?;
                    v = v * 8 + d;
                }
                out.push(
                    char::from_u32(v)
                        .filter(|_| v <= 255)
                        .ok_or("invalid escape")?,
                );
            }
            c if c == quote => out.push(c),
            _ => return Err("invalid escape".into()),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    sc: Scanner<'a>,
}

impl Parser<'_> {
    fn err(&self, pos: usize, msg: impl Into<String>) -> FilterError {
        FilterError {
            input: self.sc.input.to_string(),
            pos,
            msg: msg.into(),
        }
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, FilterError> {
        let mut out = vec![self.selector()?];
        loop {
            match self.sc.peek_token_char() {
                Some(',') => {
                    self.sc.scan();
                    out.push(self.selector()?);
                }
                None => return Ok(out),
                Some(c) => return Err(self.err(self.sc.pos, format!("unexpected input: {c}"))),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let path = self.fieldpath()?;
        if matches!(self.sc.peek_token_char(), None | Some(',')) {
            return Ok(Selector {
                path,
                op: Op::Present,
            });
        }
        let (pos, tok) = self.sc.scan();
        let op = match tok {
            Tok::Operator(o) => o,
            _ => return Err(self.err(pos, "expected an operator (\"==\"|\"!=\"|\"~=\")")),
        };
        let (vpos, vtok) = self.sc.scan();
        let value = match vtok {
            Tok::Value(v) | Tok::Field(v) => v,
            Tok::Quoted(q) => {
                unquote(&q).map_err(|e| self.err(vpos, format!("unquoting failed: {e}")))?
            }
            Tok::Eof => return Err(self.err(vpos, "unexpected end of input: expected value")),
            Tok::Illegal(m) => return Err(self.err(vpos, m)),
            _ => return Err(self.err(vpos, "expected value or quoted")),
        };
        let op = match op.as_str() {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            "~=" => Op::Matches(
                Regex::new(&value)
                    .map_err(|e| self.err(vpos, format!("invalid regular expression: {e}")))?,
            ),
            "@=" => Op::Contains(value),
            other => return Err(self.err(pos, format!("unsupported operator {other:?}"))),
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, FilterError> {
        let mut out = vec![self.field()?];
        while self.sc.peek_token_char() == Some('.') {
            self.sc.scan();
            out.push(self.field()?);
        }
        Ok(out)
    }

    fn field(&mut self) -> Result<String, FilterError> {
        let (pos, tok) = self.sc.scan();
        match tok {
            Tok::Field(f) => Ok(f),
            Tok::Quoted(q) => {
                unquote(&q).map_err(|e| self.err(pos, format!("unquoting failed: {e}")))
            }
            Tok::Illegal(m) => Err(self.err(pos, m)),
            _ => Err(self.err(pos, "expected field or quoted")),
        }
    }
}

/// Resolves `labels.<key>` against a label map; a helper for adaptors.
pub fn label_field(
    labels: &std::collections::HashMap<String, String>,
    path: &[String],
) -> Option<String> {
    match path {
        [_, rest @ ..] if !rest.is_empty() => labels.get(&rest.join(".")).cloned(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Obj {
        name: &'static str,
        labels: HashMap<String, String>,
    }

    impl Adaptor for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            match path.first().map(String::as_str) {
                Some("name") => Some(self.name.to_string()).filter(|s| !s.is_empty()),
                Some("labels") => label_field(&self.labels, path),
                _ => None,
            }
        }
    }

    fn obj(name: &'static str, labels: &[(&str, &str)]) -> Obj {
        Obj {
            name,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn m(f: &str, o: &Obj) -> bool {
        parse_all(&[f]).unwrap().matches(o)
    }

    #[test]
    fn operators() {
        let o = obj("foo", &[("a", "1"), ("very complex.label", "x y")]);
        assert!(m("", &o));
        assert!(m("name==foo", &o));
        assert!(!m("name==bar", &o));
        assert!(m("name!=bar", &o));
        assert!(m("name~=^f", &o));
        assert!(m("name~=/^f.o$/", &o));
        assert!(m("name@=oo", &o));
        assert!(m("labels.a", &o));
        assert!(!m("labels.b", &o));
        assert!(
            m("labels.b!=1", &o),
            "absent != value matches, as in containerd"
        );
        assert!(m(r#"labels."very complex.label"=="x y""#, &o));
        assert!(m("name==foo,labels.a==1", &o));
        assert!(!m("name==foo,labels.a==2", &o));
        assert!(m(" name == foo ", &o));
    }

    #[test]
    fn repeated_filters_are_or() {
        let o = obj("foo", &[]);
        assert!(parse_all(&["name==bar", "name==foo"]).unwrap().matches(&o));
        assert!(!parse_all(&["name==bar", "name==baz"]).unwrap().matches(&o));
        let none: [&str; 0] = [];
        assert!(parse_all(&none).unwrap().matches(&o));
    }

    #[test]
    fn values_may_hold_dots_slashes_and_colons() {
        let o = obj("docker.io/library/busybox:latest", &[]);
        assert!(m("name==docker.io/library/busybox:latest", &o));
        assert!(m(r#"name=="docker.io/library/busybox:latest""#, &o));
    }

    #[test]
    fn quoting_and_escapes() {
        let o = obj("a\"b", &[("k|x", "v")]);
        assert!(m(r#"name=="a\"b""#, &o));
        assert!(m(r#"labels.|k\|x|==v"#, &o));
        assert!(m(r#"name=="\x61\u0022b""#, &o));
        assert!(m(r#"name=="\141\042b""#, &o));
    }

    #[test]
    fn malformed_filters_are_errors() {
        for bad in [
            "name==",
            "==foo",
            "name=foo",
            "name===foo",
            "name==\"unterminated",
            "name~=/(/",
            "name==foo,",
            "labels.",
            "name==\"bad\\q\"",
            "name foo",
            "name==foo bar",
            "na\0me",
        ] {
            assert!(parse_all(&[bad]).is_err(), "{bad:?} should not parse");
        }
        let e = parse("name=foo").unwrap_err().to_string();
        assert!(e.contains("parse error"), "{e}");
    }

    #[test]
    fn never_panics_on_noise() {
        let alphabet: Vec<char> = "ab.,=!~@\"/|\\ \n\0é1_-".chars().collect();
        let mut s: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..5000 {
            let len = (s % 16) as usize;
            let mut text = String::new();
            for _ in 0..len {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                text.push(alphabet[(s % alphabet.len() as u64) as usize]);
            }
            let _ = parse(&text);
        }
    }
}
