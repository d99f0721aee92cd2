//! `quiver-interop`: the interop runner's endpoint. Configured entirely by environment variables; see
//! the `quiver_interop` crate docs and `interop/README.md`.

fn main() {
    std::process::exit(quiver_interop::main_exit_code());
}
