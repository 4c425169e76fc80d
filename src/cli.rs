//! Command-line interface: one short function per command over the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use dmctl::doctor;

#[derive(Parser, Debug)]
#[command(
    name = "dmctl",
    version,
    about = "Manage device-mapper thin pools, thin volumes and snapshot chains"
)]
struct Cli {
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check what dmctl needs on this host.
    Doctor,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dmctl: error: {}", one_line(&e));
            1
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

fn run(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Doctor => cmd_doctor(cli.json),
    }
}

fn cmd_doctor(json: bool) -> Result<i32> {
    let checks = doctor::run_checks();
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let verdict = match c.verdict {
                doctor::Verdict::Ok => "ok",
                doctor::Verdict::Warn => "warn",
                doctor::Verdict::Fail => "FAIL",
            };
            println!("{verdict:>4}  {:<14} {}", c.name, c.detail);
        }
    }
    Ok(if doctor::all_required_ok(&checks) {
        0
    } else {
        1
    })
}
