//! The dmctl binary: parse the command line, call the library, print.
//! Each command is a short function in `cli`; errors become one line.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
