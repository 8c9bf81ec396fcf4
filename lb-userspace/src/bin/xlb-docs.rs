//! `xlb-docs ROOT`: writes the man pages (ROOT/usr/share/man/man1/*.1, uncompressed) and
//! the bash, zsh and fish completions (their distribution paths under ROOT), generated
//! from the CLI definition. Run by `cargo xtask package`; not installed.
use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let Some(root) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: xlb-docs ROOT");
        return ExitCode::from(2);
    };
    let man_dir = root.join("usr/share/man/man1");
    let written = xlb::docs::man_pages(&man_dir).and_then(|mut pages| {
        pages.extend(xlb::docs::completion_files(&root)?);
        Ok(pages)
    });
    match written {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xlb-docs: writing under {}: {e}", root.display());
            ExitCode::FAILURE
        }
    }
}
