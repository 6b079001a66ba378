//! The `mailvalve` binary: parse the command line and hand over to the library.
//! It must never hold logic of its own.
fn main() -> std::process::ExitCode {
    mailvalve::cli::main()
}
