//! `fleet-server [--listen ADDR] [--name N] [--tools N] [--page N] [--list-delay-ms MS]`: an
//! MCP server with N tools listed in pages, each list answered after a delay (the merged-list
//! benchmark of virtual servers, `scripts/bench/federation`, starts ten).

use mcp_gateway_examples::fleet_server::{spawn_on, Fleet};
use std::net::SocketAddr;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut addr: SocketAddr = "127.0.0.1:3002".parse()?;
    let (mut name, mut tools, mut page, mut delay) = ("fleet".to_owned(), 20usize, 0usize, 0u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => addr = val()?.parse()?,
            "--name" => name = val()?.clone(),
            "--tools" => tools = val()?.parse()?,
            "--page" => page = val()?.parse()?,
            "--list-delay-ms" => delay = val()?.parse()?,
            "-h" | "--help" => {
                println!("fleet-server [--listen 127.0.0.1:3002] [--name fleet] [--tools 20] [--page 0] [--list-delay-ms 0]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let fleet = Fleet::new(&name, tools, page).list_delay(Duration::from_millis(delay));
    let addr = spawn_on(listener, fleet)?;
    eprintln!("fleet MCP server {name:?} listening on http://{addr}/mcp");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
