fn main() -> std::process::ExitCode {
    xlb::cli::main()
}
