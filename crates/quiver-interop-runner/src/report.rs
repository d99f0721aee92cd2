//! The markdown report: a matrix (case x server/client pair) and each cell's reason, checks and relay
//! counters, printed unedited into INTEROP.md.

use std::fmt::Write;

use crate::checks::CheckStatus;
use crate::run::{CellResult, Outcome};

/// Short cell text for the matrix.
pub fn cell_text(cell: &CellResult) -> String {
    match &cell.outcome {
        Outcome::Ok if cell.skipped_checks().is_empty() => "ok".into(),
        Outcome::Ok => format!("ok (unchecked: {})", cell.skipped_checks().join(", ")),
        Outcome::Fail(_) => "**FAIL**".into(),
        Outcome::Unsupported(_) => "unsupported".into(),
        Outcome::Skipped(_) => "skipped".into(),
    }
}

/// Reason line of a cell.
pub fn reason(cell: &CellResult) -> String {
    match &cell.outcome {
        Outcome::Ok => "ok".into(),
        Outcome::Fail(why) => format!("FAIL({why})"),
        Outcome::Unsupported(why) => format!("unsupported({why})"),
        Outcome::Skipped(why) => format!("skipped({why})"),
    }
}

/// The matrix and the details. `pairs` are (server, client) in column order; `cases` in row order.
pub fn markdown(cases: &[String], pairs: &[(String, String)], cells: &[CellResult], seed: u64, quick: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "seed {seed}{}; columns are server / client\n", if quick { ", --quick" } else { "" });
    let header: Vec<String> = pairs.iter().map(|(s, c)| format!("{s} / {c}")).collect();
    let _ = writeln!(out, "| case | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(pairs.len()));
    for case in cases {
        let row: Vec<String> = pairs
            .iter()
            .map(|(server, client)| {
                cells
                    .iter()
                    .find(|c| &c.case == case && &c.server == server && &c.client == client)
                    .map_or_else(|| "-".to_string(), cell_text)
            })
            .collect();
        let _ = writeln!(out, "| {case} | {} |", row.join(" | "));
    }
    let _ = writeln!(out, "\n### Cells\n");
    for cell in cells {
        let _ = writeln!(
            out,
            "- {} / server {} / client {}: {} ({:.1}s)",
            cell.case,
            cell.server,
            cell.client,
            reason(cell),
            cell.elapsed.as_secs_f64()
        );
        for check in &cell.checks {
            let status = match check.status {
                CheckStatus::Passed => "ok",
                CheckStatus::Failed => "FAIL",
                CheckStatus::Skipped => "skipped",
            };
            let _ = writeln!(out, "  - check {}: {status}: {}", check.name, check.detail);
        }
        if let Some(counters) = &cell.counters {
            let _ = writeln!(out, "  - relay: {}", counters.describe());
        }
        let _ = writeln!(out, "  - scenario: {}", cell.scenario);
        if let Some(note) = &cell.size_note {
            let _ = writeln!(out, "  - {note}");
        }
        if let Some(dir) = &cell.kept_dir {
            let _ = writeln!(out, "  - kept in {}", dir.display());
        }
    }
    out
}
