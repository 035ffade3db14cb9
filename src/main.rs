fn main() -> std::process::ExitCode {
    batchwatch::cli::main()
}
