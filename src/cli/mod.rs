//! Command-line interface: parse, dispatch (one call per command), print.
//! Every error is one line on stderr, `dmctl: error: ...`: exit 2 for usage
//! errors (clap's, bad names and sizes included), 1 for the rest. A hint
//! line may follow a usage error.

#[macro_use]
mod print;
mod args;
mod commands;

use args::{Cli, Command, ImageCommand, PoolCommand, Units};
use clap::{CommandFactory, FromArgMatches};
use dmctl::ops::Ctx;
use dmctl::store::{Store, DEFAULT_ROOT};
use print::Printer;
use std::path::PathBuf;

/// Exit status of a command whose stdout was closed under it (a reader
/// that went away, as `| head`): what a shell reports for SIGPIPE, and no
/// message, as coreutils do.
const EXIT_BROKEN_PIPE: i32 = 141;

pub fn main() -> i32 {
    commands::install_sink();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = run(&cli);
    // With -v: when the work ended (what follows is the process's exit).
    dmctl::trace::step(|| "done".into());
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => EXIT_BROKEN_PIPE,
        Err(e) => {
            // A bare I/O error is the CLI's own writing to stdout (every
            // other one names its path).
            let stdout = if e.downcast_ref::<std::io::Error>().is_some() {
                "stdout: "
            } else {
                ""
            };
            eprintln!("dmctl: error: {stdout}{}", one_line(&e));
            1
        }
    }
}

/// Parse the command line. Help and version go to stdout (exit 0); a usage
/// error is `dmctl: error: ...` and clap's hints, exit 2.
fn parse() -> Result<Cli, i32> {
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(std::env::args_os());
    // Freeing clap's tree of every command and argument was a quarter of a
    // command's start-up instructions (callgrind); the process ends soon.
    std::mem::forget(command);
    let mut err = match matches.and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    // clap echoes a bad value raw: a newline in it would split the error line.
    use clap::error::{ContextKind, ContextValue};
    if let Some(ContextValue::String(v)) = err.get(ContextKind::InvalidValue) {
        let v = ContextValue::String(v.escape_debug().to_string());
        err.insert(ContextKind::InvalidValue, v);
    }
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let text = err.render().to_string();
        return match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
            Ok(()) => Err(0),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(EXIT_BROKEN_PIPE),
            Err(e) => {
                eprintln!("dmctl: error: stdout: {e}");
                Err(1)
            }
        };
    }
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // `dmctl pool`: the help of what is missing, as a usage error.
        eprint!("dmctl: error: a subcommand is required\n\n{}", err.render());
        return Err(2);
    }
    eprint!("{}", usage_error_text(&err.render().to_string()));
    Err(2)
}

/// clap's rendered error with its first line as `dmctl: error: ...`, the
/// offending value kept on that one line (a newline in it would split it).
fn usage_error_text(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let mut out = format!("dmctl: error: {first}\n");
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The error and its causes on one line, each cause once: a library error
/// that already shows its source (an I/O error on a path) is not followed
/// by that source again.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg.replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn root(cli: &Cli) -> PathBuf {
    cli.root
        .clone()
        .or_else(|| std::env::var_os("DMCTL_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

fn run(cli: &Cli) -> anyhow::Result<i32> {
    if cli.verbose {
        dmctl::trace::enable();
    }
    let ctx = Ctx::new(Store::new(root(cli)));
    let p = Printer {
        json: cli.json,
        units: if cli.bytes { Units::B } else { cli.units },
    };
    use commands as c;
    match &cli.command {
        Command::Doctor => c::doctor(&p),
        Command::Pool(cmd) => run_pool(&ctx, &p, cmd),
        Command::Image(cmd) => run_image(&ctx, &p, cmd),
        Command::Create {
            volume,
            size,
            fs,
            mkfs_args,
        } => c::create(&ctx, &p, volume, *size, fs.filesystem(), mkfs_args),
        Command::Snapshot {
            origin,
            volume,
            size,
            activate,
        } => c::snapshot(&ctx, &p, origin, volume, *size, *activate),
        Command::Activate { volume, ro } => c::activate(&ctx, &p, volume, *ro),
        Command::Deactivate { volume } => c::deactivate(&ctx, &p, volume),
        Command::Mount {
            volume,
            dir,
            ro,
            options,
        } => c::mount(&ctx, &p, volume, dir, *ro, options),
        Command::Umount { volume } => c::umount(&ctx, &p, volume),
        Command::Rm { volume, force } => c::rm(&ctx, &p, volume, *force),
        Command::Resize { volume, size } => c::resize(&ctx, &p, volume, *size),
        Command::Ls {
            pool,
            tree,
            columns,
        } => c::ls(&ctx, &p, pool.as_deref(), *tree, columns),
        Command::Info { volume } => c::info(&ctx, &p, volume),
        Command::Check { pool, repair } => c::check(&ctx, &p, pool, *repair),
        Command::Diff {
            volume,
            output,
            nearest_ancestor,
        } => c::diff(&ctx, &p, volume, output.as_deref(), *nearest_ancestor),
        Command::Serve(a) => c::serve(&ctx, a),
        Command::Completions { shell } => c::completions(*shell),
        Command::Manpages { dir } => c::manpages(dir),
    }
}

fn run_image(ctx: &Ctx, p: &Printer, cmd: &ImageCommand) -> anyhow::Result<i32> {
    use commands::image as c;
    match cmd {
        ImageCommand::Import(a) => c::import(ctx, p, a),
        ImageCommand::Ls { pool } => c::ls(ctx, p, pool),
        ImageCommand::Inspect { pool, reference } => c::inspect(ctx, p, pool, reference),
        ImageCommand::Rm { pool, reference } => c::rm(ctx, p, pool, reference),
        ImageCommand::Provision {
            pool,
            reference,
            name,
            size,
            mount,
        } => c::provision(ctx, p, pool, reference, name, *size, mount.as_deref()),
        ImageCommand::Warm {
            pool,
            reference,
            spares,
            size,
        } => c::warm(ctx, p, pool, reference, *spares, *size),
        ImageCommand::Commit { volume, reference } => c::commit(ctx, p, volume, reference),
        ImageCommand::Export {
            pool,
            reference,
            dir,
        } => c::export(ctx, p, pool, reference, dir),
    }
}

fn run_pool(ctx: &Ctx, p: &Printer, cmd: &PoolCommand) -> anyhow::Result<i32> {
    use commands::pool as c;
    match cmd {
        PoolCommand::Create(a) => c::create(ctx, p, a),
        PoolCommand::Ls => c::ls(ctx, p),
        PoolCommand::Status { pool } => c::status(ctx, p, pool),
        PoolCommand::Activate { pool, all } => c::activate(ctx, p, pool.as_deref(), *all),
        PoolCommand::Deactivate { pool } => c::deactivate(ctx, p, pool),
        PoolCommand::Destroy { pool, force } => c::destroy(ctx, p, pool, *force),
        PoolCommand::Repair { pool, spare_dev } => c::repair(ctx, p, pool, spare_dev.as_deref()),
        PoolCommand::Extend {
            pool,
            data_size,
            meta_size,
        } => c::extend(ctx, p, pool, *data_size, *meta_size),
        PoolCommand::Set {
            pool,
            min_free,
            low_water_mark,
            max_overcommit,
        } => c::set(ctx, p, pool, *min_free, *low_water_mark, *max_overcommit),
        PoolCommand::Monitor(a) => c::monitor(ctx, p, a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_source_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(20);
        let e: anyhow::Error = dmctl::Error::io("/x/pools", io).into();
        assert_eq!(one_line(&e), "/x/pools: Not a directory (os error 20)");
    }

    #[test]
    fn usage_error_first_line_is_dmctl_error() {
        let t =
            usage_error_text("error: invalid value 'x'\n\nFor more information, try '--help'.\n");
        assert_eq!(
            t,
            "dmctl: error: invalid value 'x'\n\nFor more information, try '--help'.\n"
        );
    }

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}
