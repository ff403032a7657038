//! `demo-server [--listen ADDR] [--stateless] [--json]`: the demo MCP server on `/mcp`.

use mcp_gateway_examples::demo_server::{serve, DemoOptions};
use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut addr: SocketAddr = "127.0.0.1:3001".parse()?;
    let mut opts = DemoOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => addr = it.next().ok_or("--listen needs ADDR")?.parse()?,
            "--stateless" => opts.stateless = true,
            "--json" => opts.json_response = true,
            "-h" | "--help" => {
                println!("demo-server [--listen 127.0.0.1:3001] [--stateless] [--json]");
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
    eprintln!(
        "demo MCP server listening on http://{}/mcp",
        listener.local_addr()?
    );
    tokio::select! {
        () = serve(listener, opts) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
