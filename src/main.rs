//! The `postgame` binary: the built-in games, every subcommand (see [`postgame::App`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    postgame::App::new().run()
}
