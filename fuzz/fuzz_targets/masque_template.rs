//! MASQUE CONNECT-UDP URI templates (RFC 9298 §2) and targets: the proxy parses its template once and
//! matches every request path against it; the path is the peer's.
//!
//! Input: `template\npath` (no newline: the whole input is the path, matched against the default
//! template). Properties: whatever a template matches expands back to a path that matches to the same
//! target; a parsed template prints as written; a target prints as text that parses back to it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_masque::{Target, TargetPolicy, UriTemplate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (template_text, path) = text.split_once('\n').unwrap_or(("", text));
    let default = UriTemplate::default();
    check_match(&default, path);
    if let Ok(template) = UriTemplate::parse(template_text) {
        assert_eq!(template.as_str(), template_text);
        assert_eq!(UriTemplate::parse(&template.to_string()).as_ref(), Ok(&template));
        check_match(&template, path);
    }
    // Targets and policy rules come from the command line; the path doubles as one here.
    if let Ok(target) = path.parse::<Target>() {
        assert_eq!(target.to_string().parse::<Target>().as_ref(), Ok(&target), "{target} does not parse back");
        assert_eq!(default.match_path(&default.expand(&target)).as_ref(), Ok(&target));
    }
    if let Ok(policy) = TargetPolicy::parse(&[path]) {
        assert_eq!(policy.rules().len(), 1);
    }
});

fn check_match(template: &UriTemplate, path: &str) {
    let Ok(target) = template.match_path(path) else { return };
    let expanded = template.expand(&target);
    assert_eq!(template.match_path(&expanded).as_ref(), Ok(&target), "{path:?} -> {target} -> {expanded:?}");
}
