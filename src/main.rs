use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use phoenixfsd::cli::Cli;
use phoenixfsd::{daemon, logging};

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
    if cli.print_manpage {
        return print(clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()));
    }
    if let Some(shell) = cli.print_completions {
        clap_complete::generate(shell, &mut Cli::command(), "phoenixfsd", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    logging::init(cli.log_level, cli.syslog);
    match daemon::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("phoenixfsd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print(written: std::io::Result<()>) -> ExitCode {
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phoenixfsd: {e}");
            ExitCode::FAILURE
        }
    }
}
