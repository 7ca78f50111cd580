fn main() -> std::process::ExitCode {
    pikube::cli::main()
}
