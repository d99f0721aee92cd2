//! The client's URLs (`https://host:port/path`): just enough parsing to know whom to connect to, what
//! to ask for and under which name to save it.

use std::fmt;

/// The port of a URL that names none.
const HTTPS_PORT: u16 = 443;

/// One URL from `REQUESTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestUrl {
    /// The host as written, without IPv6 brackets (`server4`, `127.0.0.1`, `::1`).
    pub host: String,
    /// The port (443 when the URL names none).
    pub port: u16,
    /// The path with its leading slash and any query (`/file?x=1`); `/` when the URL has none.
    pub path: String,
}

/// A URL the client cannot fetch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `https://` (or `http://`, which the runner never sends but is read the same way).
    #[error("{0:?} is not an https:// URL")]
    Scheme(String),
    /// No host, an unclosed `[`, or a port that is not a number.
    #[error("{0:?} has no valid host and port")]
    Authority(String),
    /// The path ends in `/` (or is empty), so there is no file name to save the download under.
    #[error("{0:?} names no file (its path ends with `/`)")]
    NoFileName(String),
}

impl RequestUrl {
    /// Parses `https://host[:port][/path]`, with `[v6 address]` hosts.
    ///
    /// # Errors
    /// [`UrlError`] for another scheme, a missing host, a bad port or a path without a file name.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
            .ok_or_else(|| UrlError::Scheme(text.to_owned()))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(start) => (&rest[..start], &rest[start..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
        let bad_authority = || UrlError::Authority(text.to_owned());
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(bad_authority)?;
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or_else(bad_authority)?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(['@', ' ']) {
            return Err(bad_authority());
        }
        let port = match port {
            Some(port) => port.parse().map_err(|_| bad_authority())?,
            None => HTTPS_PORT,
        };
        let url = Self { host: host.to_owned(), port, path };
        if url.file_name().is_none() {
            return Err(UrlError::NoFileName(text.to_owned()));
        }
        Ok(url)
    }

    /// The last segment of the path, without the query: the name the download is saved under.
    /// `None` when it is empty or `.`/`..` (it could not be a file in the downloads directory).
    pub fn file_name(&self) -> Option<&str> {
        let path = self.path.split(['?', '#']).next().unwrap_or_default();
        let name = path.rsplit('/').next().unwrap_or_default();
        (!name.is_empty() && name != "." && name != ".." && !name.contains('\\')).then_some(name)
    }

    /// `host:port`, with brackets around an IPv6 host: what `:authority` and name lookups take.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for RequestUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, path: &str) -> RequestUrl {
        RequestUrl { host: host.to_owned(), port, path: path.to_owned() }
    }

    #[test]
    fn parses_the_runner_forms() {
        assert_eq!(RequestUrl::parse("https://server4:443/abc").unwrap(), url("server4", 443, "/abc"));
        assert_eq!(RequestUrl::parse("https://127.0.0.1:4433/a/b.bin").unwrap(), url("127.0.0.1", 4433, "/a/b.bin"));
        assert_eq!(RequestUrl::parse("https://[::1]:4433/x").unwrap(), url("::1", 4433, "/x"));
        assert_eq!(RequestUrl::parse("https://[fd00::2]/x").unwrap(), url("fd00::2", 443, "/x"));
        assert_eq!(RequestUrl::parse("https://example.com/f?x=1").unwrap(), url("example.com", 443, "/f?x=1"));
        assert_eq!(RequestUrl::parse("http://h:1/f").unwrap(), url("h", 1, "/f"));
    }

    #[test]
    fn names_the_file_and_the_authority() {
        let parsed = RequestUrl::parse("https://[::1]:4433/dir/name.txt?q=/x").unwrap();
        assert_eq!(parsed.file_name(), Some("name.txt"));
        assert_eq!(parsed.authority(), "[::1]:4433");
        assert_eq!(parsed.to_string(), "https://[::1]:4433/dir/name.txt?q=/x");
        assert_eq!(RequestUrl::parse("https://h:1/f").unwrap().authority(), "h:1");
    }

    #[test]
    fn refuses_what_it_cannot_fetch_or_save() {
        for (text, expected) in [
            ("ftp://h/f", UrlError::Scheme("ftp://h/f".into())),
            ("h:1/f", UrlError::Scheme("h:1/f".into())),
            ("https:///f", UrlError::Authority("https:///f".into())),
            ("https://h:port/f", UrlError::Authority("https://h:port/f".into())),
            ("https://h:70000/f", UrlError::Authority("https://h:70000/f".into())),
            ("https://[::1/f", UrlError::Authority("https://[::1/f".into())),
            ("https://[::1]x/f", UrlError::Authority("https://[::1]x/f".into())),
            ("https://u@h/f", UrlError::Authority("https://u@h/f".into())),
            ("https://h:1", UrlError::NoFileName("https://h:1".into())),
            ("https://h:1/dir/", UrlError::NoFileName("https://h:1/dir/".into())),
            ("https://h:1/..", UrlError::NoFileName("https://h:1/..".into())),
        ] {
            assert_eq!(RequestUrl::parse(text), Err(expected), "{text}");
        }
    }
}
