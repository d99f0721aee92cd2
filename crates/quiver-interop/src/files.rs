//! Where files come from and go to: a request path resolved inside `WWW` without ever leaving it, and
//! a download's place in `DOWNLOADS`.

use std::path::{Component, Path, PathBuf};

/// A request path that must not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an absolute URL path (`/name`).
    #[error("request path {0:?} does not start with `/`")]
    NotAbsolute(String),
    /// `..`, a Windows separator, a NUL, or a segment that would climb out of `WWW`.
    #[error("request path {0:?} tries to leave the served directory")]
    Traversal(String),
    /// Only `/` (a directory, not a file).
    #[error("request path {0:?} names no file")]
    Empty(String),
}

/// The file under `root` that the URL path `request_path` (`/dir/name`, query ignored) names.
///
/// Only plain segments are kept: `..`, `.`-free traversal tricks, backslashes and NULs are refused, so
/// the result is always inside `root` (symbolic links inside `root` are the operator's own choice).
///
/// # Errors
/// [`PathError`] for a path that is not absolute, names no file, or tries to leave `root`.
pub fn resolve_under(root: &Path, request_path: &str) -> Result<PathBuf, PathError> {
    let path = request_path.split(['?', '#']).next().unwrap_or_default();
    let Some(relative) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute(request_path.to_owned()));
    };
    if relative.contains(['\\', '\0']) {
        return Err(PathError::Traversal(request_path.to_owned()));
    }
    let mut resolved = root.to_path_buf();
    let mut segments = 0;
    for segment in relative.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(PathError::Traversal(request_path.to_owned())),
            segment => {
                // A segment that the platform reads as more than a plain name (a drive prefix, a root)
                // would replace `root` when joined.
                if !matches!(Path::new(segment).components().next(), Some(Component::Normal(_)))
                    || Path::new(segment).components().count() != 1
                {
                    return Err(PathError::Traversal(request_path.to_owned()));
                }
                resolved.push(segment);
                segments += 1;
            }
        }
    }
    if segments == 0 {
        return Err(PathError::Empty(request_path.to_owned()));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_resolve_inside_the_root() {
        let root = Path::new("/www");
        assert_eq!(resolve_under(root, "/file"), Ok(PathBuf::from("/www/file")));
        assert_eq!(resolve_under(root, "/dir/file.bin?x=1"), Ok(PathBuf::from("/www/dir/file.bin")));
        assert_eq!(resolve_under(root, "//dir/./file"), Ok(PathBuf::from("/www/dir/file")));
        assert_eq!(resolve_under(root, "/..file"), Ok(PathBuf::from("/www/..file")));
    }

    #[test]
    fn nothing_leaves_the_root() {
        let root = Path::new("/www");
        for path in ["/../etc/passwd", "/a/../../b", "/..", "/a/..", "/a\\..\\b", "/a\0b"] {
            assert_eq!(resolve_under(root, path), Err(PathError::Traversal(path.to_owned())), "{path}");
        }
        assert_eq!(resolve_under(root, "etc/passwd"), Err(PathError::NotAbsolute("etc/passwd".into())));
        assert_eq!(resolve_under(root, ""), Err(PathError::NotAbsolute(String::new())));
        assert_eq!(resolve_under(root, "/"), Err(PathError::Empty("/".into())));
        assert_eq!(resolve_under(root, "/./"), Err(PathError::Empty("/./".into())));
    }
}
