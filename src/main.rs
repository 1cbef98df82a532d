use std::process::ExitCode;

use clap::Parser;
use phoenixfsd::cli::Cli;
use phoenixfsd::daemon;

fn main() -> ExitCode {
    // `phoenixfsd ctl ...`: the client of a running daemon's control socket.
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        return phoenixfsd::ctl::main(std::env::args_os().skip(1));
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => e.exit(), // clap prints the message; usage errors exit with 2
    };
    let cli = match cli.normalize() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("phoenixfsd: {e}\nTry 'phoenixfsd --help' for more information.");
            return ExitCode::from(2);
        }
    };
    if cli.print_capabilities {
        println!("{}", daemon::CAPABILITIES);
        return ExitCode::SUCCESS;
    }
    daemon::init_logging(cli.log_level);
    match daemon::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("phoenixfsd: {e}");
            ExitCode::FAILURE
        }
    }
}
