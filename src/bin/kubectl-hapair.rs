//! `kubectl hapair`: the kubectl plugin for HighAvailabilityPairs.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Completion (see `hapair::cli::complete`): as `kubectl hapair
    // __complete WORDS…`, or run as `kubectl_complete-hapair WORDS…`,
    // kubectl's name for a plugin's completion. The words are read as they
    // are, never as this command's flags.
    let invoked = args.first().and_then(|a| std::path::Path::new(a).file_name().map(|n| n.to_os_string()));
    let completing = if invoked.is_some_and(|n| n == "kubectl_complete-hapair") {
        Some(&args[1..])
    } else if args.get(1).is_some_and(|a| a == "__complete") {
        Some(&args[2..])
    } else {
        None
    };
    // Parsed before anything else: `--help`, `--version` and a malformed
    // command line answer at once.
    let cli = completing.is_none().then(|| hapair::cli::Cli::parse_from(&args));
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(cli) = cli else {
        let words = completing.unwrap_or_default().iter().map(|w| w.to_string_lossy().into_owned());
        let words: Vec<String> = words.collect();
        print!("{}", rt.block_on(hapair::cli::complete::complete(&words)));
        return ExitCode::SUCCESS;
    };
    match rt.block_on(hapair::cli::run(cli)) {
        Ok(out) => {
            print!("{out}");
            if !out.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
