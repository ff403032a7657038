//! `conformance-server [--listen ADDR | --stdio]`: the conformance fixture (see
//! `mcp_gateway_examples::conformance`), served on every path, or over stdio.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut addr: SocketAddr = "127.0.0.1:3002".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => addr = args.next().ok_or("--listen needs ADDR")?.parse()?,
            "--stdio" => return mcp_gateway_examples::conformance::serve_stdio().await,
            "-h" | "--help" => {
                println!("conformance-server [--listen 127.0.0.1:3002 | --stdio]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "conformance fixture listening on http://{}/mcp",
        listener.local_addr()?
    );
    tokio::select! {
        () = mcp_gateway_examples::conformance::serve(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
