//! k3s STAND-IN: a test double of the `k3s` binary for pikube's lab tests.
//! It is NOT Kubernetes: no containers, no kubelet, no etcd. See README.md.

mod api;
mod cli;
mod cluster;
mod kubectl;
mod net;
mod node;
mod server;
mod snapshot;
mod util;

fn usage() -> String {
    format!(
        "NAME:\n   k3s - Kubernetes, but small and simple (STAND-IN test double, not Kubernetes)\n\nUSAGE:\n   k3s [global options] command [command options] [arguments...]\n\nVERSION:\n   {} (standin)\n\nCOMMANDS:\n   server   Run management server\n   agent    Run node agent\n   kubectl  Run kubectl (small stand-in subset)\n   etcd-snapshot  Manage etcd snapshots (stand-in: save only)\n   token    Manage tokens (stand-in: generate only)\n\nGLOBAL OPTIONS:\n   --version, -v  print the version\n   --help, -h     show help\n",
        cluster::VERSION
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.first().is_some_and(|a| node::is_shim(a)) {
        node::run_shim();
    }
    let sub = args.get(1).map(String::as_str).unwrap_or("");
    let rest: Vec<String> = args.iter().skip(2).cloned().collect();
    match sub {
        "--version" | "-v" | "version" => {
            println!("k3s version {} (standin)", cluster::VERSION);
            println!("go version go1.22.9 (k3s STAND-IN, built with rustc — not a Go binary)");
        }
        "" | "--help" | "-h" | "help" => print!("{}", usage()),
        "server" | "agent" => {
            let is_server = sub == "server";
            let env = |k: &str| std::env::var(k).ok();
            let o = match cli::resolve(is_server, &rest, &env) {
                Ok(o) => o,
                Err(e) if e == "help" => {
                    println!("k3s {sub} [OPTIONS] (STAND-IN; flags as documented at docs.k3s.io/cli/{sub})");
                    return;
                }
                Err(e) => {
                    if e.starts_with("flag ") {
                        eprintln!("Incorrect Usage: {e}\n");
                    }
                    util::fatal(&e);
                }
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                if is_server {
                    server::run_server(o).await
                } else {
                    server::run_agent(o).await
                }
            });
        }
        "kubectl" => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let code = rt.block_on(kubectl::run(&rest));
            std::process::exit(code);
        }
        "etcd-snapshot" => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            std::process::exit(rt.block_on(snapshot::save_command(&rest)));
        }
        "token" => match rest.first().map(String::as_str) {
            // real: prints a random bootstrap token, [a-z0-9]{6}.[a-z0-9]{16} (docs.k3s.io/cli/token)
            Some("generate") => {
                let mut b = [0u8; 22];
                getrandom::getrandom(&mut b).expect("getrandom");
                let a: String =
                    b.iter().map(|x| b"abcdefghijklmnopqrstuvwxyz0123456789"[*x as usize % 36] as char).collect();
                println!("{}.{}", &a[..6], &a[6..]);
            }
            None | Some("-h") | Some("--help") => {
                println!("NAME:\n   k3s token - Manage tokens (STAND-IN: only `generate` is implemented)\n\nCOMMANDS:\n   generate  Generate and print a bootstrap token, but do not actually create it");
            }
            Some(other) => {
                util::fatal(&format!("STAND-IN: `k3s token {other}` is not implemented by the k3s stand-in"))
            }
        },
        other if other.starts_with('-') => {
            eprintln!("Incorrect Usage: flag provided but not defined: -{}\n", other.trim_start_matches('-'));
            eprint!("{}", usage());
            util::fatal(&format!("flag provided but not defined: -{}", other.trim_start_matches('-')));
        }
        other => {
            // urfave/cli v1 behaviour for an unknown command
            eprintln!("No help topic for '{other}'");
            std::process::exit(3);
        }
    }
}
