//! The CONNECT-UDP URI template (RFC 9298 §2): expansion on the client, matching on the proxy.
//!
//! Only what RFC 9298 needs from RFC 6570: level 1 (simple string expansion) of the two variables
//! `target_host` and `target_port`, in the path or query of a path-and-query template such as
//! `/.well-known/masque/udp/{target_host}/{target_port}/` or `/masque?h={target_host}&p={target_port}`.
//! Everything here is a pure function of its inputs (no IO, no allocation a peer can grow beyond the
//! request it sent), so it can be fuzzed on its own.

use std::fmt;
use std::str::FromStr;

use crate::target::{Target, TargetError, TargetHost, parse_port};

/// The default template (RFC 9298 §3, the well-known location).
pub const DEFAULT_TEMPLATE: &str = "/.well-known/masque/udp/{target_host}/{target_port}/";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Host,
    Port,
}

/// A parsed CONNECT-UDP URI template (path and query only; the authority is the proxy's).
///
/// ```
/// use quiver_masque::{Target, UriTemplate};
///
/// let template = UriTemplate::default();
/// let target: Target = "[2001:db8::1]:53".parse()?;
/// let path = template.expand(&target);
/// assert_eq!(path, "/.well-known/masque/udp/2001%3Adb8%3A%3A1/53/");
/// assert_eq!(template.match_path(&path)?, target);
///
/// let query = UriTemplate::parse("/masque?h={target_host}&p={target_port}")?;
/// assert_eq!(query.match_path("/masque?h=dns.example&p=53")?, "dns.example:53".parse()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriTemplate {
    source: String,
    parts: Vec<Part>,
}

/// Why a template string is not a usable CONNECT-UDP template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// Templates here are a path (and optional query) on the proxy.
    #[error("URI template {0:?} must start with '/' (a path on the proxy)")]
    NotAPath(String),
    /// `{` without `}`, or `}` without `{`.
    #[error("URI template {0:?} has an unbalanced brace")]
    UnbalancedBrace(String),
    /// A variable other than the two RFC 9298 defines, or an RFC 6570 operator above level 1.
    #[error("URI template variable {{{0}}} is not supported: use {{target_host}} and {{target_port}}")]
    UnsupportedVariable(String),
    /// A variable appears twice.
    #[error("URI template variable {{{0}}} appears more than once")]
    DuplicateVariable(String),
    /// `target_host` or `target_port` is missing.
    #[error("URI template {0:?} needs both {{target_host}} and {{target_port}}")]
    MissingVariable(String),
    /// Two variables with nothing between them cannot be told apart when matching.
    #[error("URI template {0:?} needs a literal between {{target_host}} and {{target_port}}")]
    AdjacentVariables(String),
    /// A literal character that may not appear in a URI.
    #[error("URI template {template:?} has the character {character:?}, which may not appear in a URI")]
    InvalidCharacter {
        /// The template.
        template: String,
        /// The offending character.
        character: char,
    },
}

/// Why a request path does not name a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MatchError {
    /// The path is not one of this template's expansions (answer 404).
    #[error("path does not match the template")]
    NoMatch,
    /// A variable's value has a bad percent-encoding or is not UTF-8 (answer 400).
    #[error("bad percent-encoding in {0:?}")]
    BadEncoding(String),
    /// The values decode, but not to a valid host or port (answer 400).
    #[error(transparent)]
    InvalidTarget(#[from] TargetError),
}

/// RFC 3986 unreserved characters: what level 1 expansion leaves as is.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Characters an expanded variable value can consist of: unreserved, and `%` of a pct-encoding.
fn is_value_byte(byte: u8) -> bool {
    is_unreserved(byte) || byte == b'%'
}

/// Characters a literal part of a template may hold: RFC 3986 unreserved, reserved and `%`.
fn is_literal_byte(byte: u8) -> bool {
    is_value_byte(byte) || b":/?#[]@!$&'()*+,;=".contains(&byte)
}

impl UriTemplate {
    /// Parses a template; see the module documentation for what is supported.
    ///
    /// # Errors
    /// [`TemplateError`] says what is wrong with it.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        if !template.starts_with('/') {
            return Err(TemplateError::NotAPath(template.to_owned()));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(at) if rest.as_bytes()[at] == b'}' => {
                    return Err(TemplateError::UnbalancedBrace(template.to_owned()));
                }
                Some(at) => {
                    push_literal(&mut parts, &rest[..at], template)?;
                    let close =
                        rest[at..].find('}').ok_or_else(|| TemplateError::UnbalancedBrace(template.to_owned()))?;
                    let name = &rest[at + 1..at + close];
                    let part = match name {
                        "target_host" => Part::Host,
                        "target_port" => Part::Port,
                        other => return Err(TemplateError::UnsupportedVariable(other.to_owned())),
                    };
                    if parts.contains(&part) {
                        return Err(TemplateError::DuplicateVariable(name.to_owned()));
                    }
                    if matches!(parts.last(), Some(Part::Host | Part::Port)) {
                        return Err(TemplateError::AdjacentVariables(template.to_owned()));
                    }
                    parts.push(part);
                    rest = &rest[at + close + 1..];
                }
                None => {
                    push_literal(&mut parts, rest, template)?;
                    rest = "";
                }
            }
        }
        if !parts.contains(&Part::Host) || !parts.contains(&Part::Port) {
            return Err(TemplateError::MissingVariable(template.to_owned()));
        }
        Ok(Self { source: template.to_owned(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The path and query that ask for `target` (RFC 6570 level 1: every byte of a value that is not
    /// unreserved is percent-encoded, so `2001:db8::1` becomes `2001%3Adb8%3A%3A1`).
    pub fn expand(&self, target: &Target) -> String {
        let mut out = String::with_capacity(self.source.len() + 64);
        for part in &self.parts {
            match part {
                Part::Literal(literal) => out.push_str(literal),
                Part::Host => percent_encode(&target.host_for_template(), &mut out),
                Part::Port => out.push_str(&target.port.to_string()),
            }
        }
        out
    }

    /// The target a request's path and query asks for.
    ///
    /// A variable's value is a run of unreserved characters and pct-encodings. When the literal after
    /// it could also occur inside a value (for example `-` in `{target_host}-{target_port}`), the value
    /// extends to the literal's last occurrence in that run.
    ///
    /// # Errors
    /// [`MatchError::NoMatch`] when the path is not an expansion of this template; the other variants
    /// when it is, but with a value that is not a valid host or port.
    pub fn match_path(&self, path_and_query: &str) -> Result<Target, MatchError> {
        let text = path_and_query.as_bytes();
        let mut position = 0;
        let (mut host, mut port) = (None, None);
        for (index, part) in self.parts.iter().enumerate() {
            match part {
                Part::Literal(literal) => {
                    if !text[position..].starts_with(literal.as_bytes()) {
                        return Err(MatchError::NoMatch);
                    }
                    position += literal.len();
                }
                Part::Host | Part::Port => {
                    let run = text[position..].iter().take_while(|byte| is_value_byte(**byte)).count();
                    let end = match self.parts.get(index + 1) {
                        Some(Part::Literal(next)) => (position..=position + run)
                            .rev()
                            .find(|end| text[*end..].starts_with(next.as_bytes()))
                            .ok_or(MatchError::NoMatch)?,
                        _ => position + run,
                    };
                    let value = &path_and_query[position..end];
                    if value.is_empty() {
                        return Err(MatchError::NoMatch);
                    }
                    let decoded = percent_decode(value).ok_or_else(|| MatchError::BadEncoding(value.to_owned()))?;
                    if matches!(part, Part::Host) {
                        host = Some(decoded);
                    } else {
                        port = Some(decoded);
                    }
                    position = end;
                }
            }
        }
        if position != text.len() {
            return Err(MatchError::NoMatch);
        }
        let (Some(host), Some(port)) = (host, port) else { return Err(MatchError::NoMatch) };
        Ok(Target { host: TargetHost::parse(&host)?, port: parse_port(&port)? })
    }
}

fn push_literal(parts: &mut Vec<Part>, literal: &str, template: &str) -> Result<(), TemplateError> {
    if let Some(character) =
        literal.chars().find(|character| !character.is_ascii() || !is_literal_byte(*character as u8))
    {
        return Err(TemplateError::InvalidCharacter { template: template.to_owned(), character });
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal.to_owned()));
    }
    Ok(())
}

impl FromStr for UriTemplate {
    type Err = TemplateError;

    fn from_str(template: &str) -> Result<Self, TemplateError> {
        Self::parse(template)
    }
}

impl Default for UriTemplate {
    fn default() -> Self {
        Self {
            source: DEFAULT_TEMPLATE.to_owned(),
            parts: vec![
                Part::Literal("/.well-known/masque/udp/".into()),
                Part::Host,
                Part::Literal("/".into()),
                Part::Port,
                Part::Literal("/".into()),
            ],
        }
    }
}

impl fmt::Display for UriTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn percent_encode(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in value.bytes() {
        if is_unreserved(byte) {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        }
    }
}

/// Decodes `%XX` sequences; `None` for a truncated or non-hex sequence, or bytes that are not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3)?;
            let high = (hex[0] as char).to_digit(16)?;
            let low = (hex[1] as char).to_digit(16)?;
            out.push((high * 16 + low) as u8);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> Target {
        text.parse().unwrap()
    }

    #[test]
    fn default_template_expands_and_matches_every_host_kind() {
        let template = UriTemplate::default();
        assert_eq!(UriTemplate::parse(DEFAULT_TEMPLATE).unwrap(), template);
        let cases = [
            ("192.0.2.6:443", "/.well-known/masque/udp/192.0.2.6/443/"),
            ("[2001:db8::42]:53", "/.well-known/masque/udp/2001%3Adb8%3A%3A42/53/"),
            ("example.com:8053", "/.well-known/masque/udp/example.com/8053/"),
        ];
        for (text, path) in cases {
            assert_eq!(template.expand(&target(text)), path);
            assert_eq!(template.match_path(path).unwrap(), target(text), "{path}");
        }
        // Lowercase hex and encoded unreserved characters decode the same.
        assert_eq!(
            template.match_path("/.well-known/masque/udp/2001%3adb8%3a%3a42/5%33/").unwrap(),
            target("[2001:db8::42]:53")
        );
    }

    #[test]
    fn query_templates_and_ambiguous_separators() {
        let template = UriTemplate::parse("/masque?h={target_host}&p={target_port}").unwrap();
        let path = template.expand(&target("[::1]:5353"));
        assert_eq!(path, "/masque?h=%3A%3A1&p=5353");
        assert_eq!(template.match_path(&path).unwrap(), target("[::1]:5353"));

        let dashed = UriTemplate::parse("/udp/{target_host}-{target_port}").unwrap();
        assert_eq!(dashed.match_path("/udp/my-host.example-53").unwrap(), target("my-host.example:53"));
        let port_first = UriTemplate::parse("/p/{target_port}/h/{target_host}").unwrap();
        assert_eq!(port_first.match_path("/p/53/h/a.example").unwrap(), target("a.example:53"));
    }

    #[test]
    fn paths_that_are_not_expansions_do_not_match() {
        let template = UriTemplate::default();
        for path in [
            "/",
            "/.well-known/masque/udp/",
            "/.well-known/masque/udp/a/53",
            "/.well-known/masque/udp/a/53/x",
            "/.well-known/masque/udp//53/",
            "/.well-known/masque/udp/a//",
            "/.well-known/masque/udp/a/b/53/",
            "/.well-known/masque/udp/a/53/?q",
            "/other/a/53/",
        ] {
            assert_eq!(template.match_path(path), Err(MatchError::NoMatch), "{path}");
        }
    }

    #[test]
    fn bad_values_are_told_apart_from_no_match() {
        let template = UriTemplate::default();
        assert!(matches!(template.match_path("/.well-known/masque/udp/a%2/53/"), Err(MatchError::BadEncoding(_))));
        assert!(matches!(template.match_path("/.well-known/masque/udp/%ff/53/"), Err(MatchError::BadEncoding(_))));
        for path in [
            "/.well-known/masque/udp/a/0/",
            "/.well-known/masque/udp/a/65536/",
            "/.well-known/masque/udp/a%20b/53/",
            "/.well-known/masque/udp/fe80%3A%3A1%25eth0/53/",
        ] {
            assert!(matches!(template.match_path(path), Err(MatchError::InvalidTarget(_))), "{path}");
        }
    }

    #[test]
    fn invalid_templates_say_why() {
        type Check = fn(&TemplateError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("relative/{target_host}/{target_port}", |e| matches!(e, TemplateError::NotAPath(_))),
            ("/{target_host}/{target_port", |e| matches!(e, TemplateError::UnbalancedBrace(_))),
            ("/{target_host}}/{target_port}", |e| matches!(e, TemplateError::UnbalancedBrace(_))),
            ("/{+target_host}/{target_port}", |e| matches!(e, TemplateError::UnsupportedVariable(_))),
            ("/masque{?target_host,target_port}", |e| matches!(e, TemplateError::UnsupportedVariable(_))),
            ("/{target_host}/{target_host}", |e| matches!(e, TemplateError::DuplicateVariable(_))),
            ("/{target_host}/", |e| matches!(e, TemplateError::MissingVariable(_))),
            ("/{target_host}{target_port}", |e| matches!(e, TemplateError::AdjacentVariables(_))),
            ("/a b/{target_host}/{target_port}", |e| matches!(e, TemplateError::InvalidCharacter { .. })),
        ];
        for (template, check) in cases {
            let err = UriTemplate::parse(template).expect_err(template);
            assert!(check(&err), "{template}: {err:?}");
        }
    }

    #[test]
    fn expansion_and_matching_round_trip_for_many_targets() {
        // A fixed-seed generator: the same thousands of targets on every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            state >> 16
        };
        let templates = [
            UriTemplate::default(),
            UriTemplate::parse("/masque?h={target_host}&p={target_port}").unwrap(),
            UriTemplate::parse("/p/{target_port}/h/{target_host}").unwrap(),
            UriTemplate::parse("/udp/{target_host}-{target_port}").unwrap(),
        ];
        const LABEL_BYTES: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
        for round in 0..3000 {
            let host = match round % 3 {
                0 => std::net::Ipv4Addr::from(next() as u32).to_string(),
                1 => std::net::Ipv6Addr::from(u128::from(next()) << 64 | u128::from(next())).to_string(),
                _ => (0..1 + next() % 4)
                    .map(|_| {
                        let length = 1 + next() as usize % 20;
                        let mut label: String =
                            (0..length).map(|_| LABEL_BYTES[next() as usize % LABEL_BYTES.len()] as char).collect();
                        // Labels may not start or end with '-'; all-digit names would be IP literals.
                        label.replace_range(0..1, "x");
                        if label.ends_with('-') {
                            label.replace_range(label.len() - 1.., "y");
                        }
                        label
                    })
                    .collect::<Vec<_>>()
                    .join("."),
            };
            let port = 1 + (next() % 65_535) as u16;
            let target = Target::new(&host, port).unwrap();
            for template in &templates {
                let path = template.expand(&target);
                assert_eq!(template.match_path(&path).as_ref(), Ok(&target), "{template} {path}");
            }
        }
    }

    #[test]
    fn matching_never_panics_on_arbitrary_paths() {
        // A cheap stand-in for the fuzzer: every prefix and every single-byte mutation of real paths.
        let templates = [UriTemplate::default(), UriTemplate::parse("/u?h={target_host}&p={target_port}").unwrap()];
        let seeds = ["/.well-known/masque/udp/2001%3Adb8%3A%3A42/53/", "/u?h=a.b&p=1"];
        for template in &templates {
            for seed in seeds {
                for end in 0..=seed.len() {
                    let _ = template.match_path(&seed[..end]);
                }
                for index in 0..seed.len() {
                    for replacement in ["%", "/", "?", "&", "{", "é", "", "%%"] {
                        let mutated = format!("{}{replacement}{}", &seed[..index], &seed[index + 1..]);
                        let _ = template.match_path(&mutated);
                    }
                }
            }
        }
    }
}
