//! The `connect4` binary: postgame with Tic Tac Toe, Pong and Connect Four, and every
//! subcommand and flag of `postgame` (`connect4 serve`, `connect4 migrate`, …).

use std::process::ExitCode;

fn main() -> ExitCode {
    connect4::app().run()
}
