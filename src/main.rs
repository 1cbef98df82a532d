use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use phoenixfsd::cli::Cli;
use phoenixfsd::{daemon, logging, upgrade};

fn main() -> ExitCode {
    // `phoenixfsd ctl ...`: the client of a running daemon's control socket.
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        return phoenixfsd::ctl::main(std::env::args_os().skip(1));
    }
    // A live upgrade's new binary (upgrade.rs): `__adopt HANDOVER ARGS…` or
    // `__check-upgrade HANDOVER ARGS…`, where ARGS are the daemon's own.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = if args.is_empty() { "phoenixfsd".into() } else { args.remove(0) };
    let mode = args.first().and_then(|a| a.to_str()).filter(|a| [upgrade::ADOPT_ARG, upgrade::CHECK_ARG].contains(a));
    let (mode, handover) = match mode {
        Some(m) if args.len() >= 2 => {
            let m = m.to_string();
            let handover = args[1].to_string_lossy().into_owned();
            args.drain(..2);
            (Some(m), handover)
        }
        _ => (None, String::new()),
    };
    if mode.as_deref() == Some(upgrade::CHECK_ARG) {
        upgrade::check_region(&handover);
    }
    upgrade::set_args(argv0.clone(), args.clone());
    let cli = match Cli::try_parse_from(std::iter::once(argv0).chain(args)) {
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
    // A live upgrade's new binary runs where the first one put it (maybe root in a user
    // namespace of its own): the first one made these checks.
    if mode.is_none()
        && let Err(e) = cli.check_privilege(phoenixfsd::security::caps::effective())
    {
        eprintln!("phoenixfsd: {e}\nTry 'phoenixfsd --help' for more information.");
        return ExitCode::from(2);
    }
    if mode.is_some() {
        let h = match upgrade::Handover::decode(&handover) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("phoenixfsd: {e}");
                return ExitCode::from(2);
            }
        };
        logging::init_adopted(cli.log_level, (h.syslog >= 0).then_some(h.syslog));
        return finish(daemon::adopt(cli, h));
    }
    logging::init(cli.log_level, cli.syslog);
    finish(daemon::run(cli))
}

fn finish(result: Result<(), daemon::Error>) -> ExitCode {
    match result {
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
