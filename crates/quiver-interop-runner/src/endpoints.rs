//! The endpoints the runner knows by name, and how to start each as a process following the endpoint
//! contract (see interop/README.md and the interop runner's quic.md).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Names of the built-in endpoints.
pub const BUILT_IN: &[&str] = &["quiver", "aioquic", "quinn"];

/// How to find the endpoints' programs.
#[derive(Clone, Debug, Default)]
pub struct EndpointTable {
    /// Repository root (for `interop/peers/aioquic_endpoint.py`).
    pub repo_root: PathBuf,
    /// Cargo target dir (for `quiver-interop` and `quinn-interop`).
    pub target_dir: PathBuf,
    /// Explicit path of the `quiver-interop` binary.
    pub quiver_bin: Option<PathBuf>,
    /// Explicit path of the `quinn-interop` binary.
    pub quinn_bin: Option<PathBuf>,
    /// Extra endpoints: name and command line (program then arguments).
    pub custom: Vec<(String, Vec<String>)>,
}

/// A resolved endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Program and arguments to run.
    Command(Vec<String>),
    /// Not available here, with what is missing.
    Missing(String),
}

impl EndpointTable {
    /// The command for `name`; an error for a name the table does not know.
    pub fn resolve(&self, name: &str) -> Result<Endpoint> {
        if let Some((_, command)) = self.custom.iter().find(|(n, _)| n == name) {
            return Ok(Endpoint::Command(command.clone()));
        }
        match name {
            "quiver" => Ok(self.binary(
                self.quiver_bin.as_deref(),
                "quiver-interop",
                "cargo build -p quiver-cli (or pass --quiver-bin)",
            )),
            "quinn" => Ok(self.binary(
                self.quinn_bin.as_deref(),
                "quinn-interop",
                "cargo build -p quiver-interop-quinn (or pass --quinn-bin)",
            )),
            "aioquic" => {
                let script = self.repo_root.join("interop/peers/aioquic_endpoint.py");
                if !script.is_file() {
                    return Ok(Endpoint::Missing(format!("{} not found", script.display())));
                }
                let python = which("python3");
                match python {
                    None => Ok(Endpoint::Missing("python3 not found".into())),
                    Some(python) => {
                        Ok(Endpoint::Command(vec![python.display().to_string(), script.display().to_string()]))
                    }
                }
            }
            other => bail!(
                "unknown endpoint {other:?}: known are {} and any given with --endpoint NAME=COMMAND",
                BUILT_IN.join(", ")
            ),
        }
    }

    fn binary(&self, explicit: Option<&Path>, name: &str, hint: &str) -> Endpoint {
        if let Some(path) = explicit {
            return if path.is_file() {
                Endpoint::Command(vec![path.display().to_string()])
            } else {
                Endpoint::Missing(format!("{} not found", path.display()))
            };
        }
        for profile in ["release", "debug"] {
            let path = self.target_dir.join(profile).join(name);
            if path.is_file() {
                return Endpoint::Command(vec![path.display().to_string()]);
            }
        }
        Endpoint::Missing(format!("{name} not in {}/{{release,debug}}: {hint}", self.target_dir.display()))
    }
}

/// `program` on PATH.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_wins_unknown_fails_missing_binary_is_reported() {
        let table = EndpointTable {
            target_dir: PathBuf::from("/nonexistent-target"),
            custom: vec![("stub".into(), vec!["/bin/true".into()])],
            ..EndpointTable::default()
        };
        assert_eq!(table.resolve("stub").unwrap(), Endpoint::Command(vec!["/bin/true".into()]));
        assert!(table.resolve("nope").is_err());
        assert!(matches!(table.resolve("quiver").unwrap(), Endpoint::Missing(_)));
    }
}
