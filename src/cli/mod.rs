//! Command-line entry point.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
pub mod passthrough;
pub mod profiles;
pub mod suppress;
