//! `flatrender-agent`: the node agent daemon.

fn main() {
    eprintln!("flatrender-agent: the daemon is not built yet; see issue 5");
    std::process::exit(2);
}
