//! `mcp-gateway pins` and `mcp-gateway approvals`: the operator's side of tool integrity.
//!
//! - `pins list --config FILE [UPSTREAM] [TOOL…]` prints what the pins file holds (no gateway
//!   needed).
//! - `pins diff --config FILE UPSTREAM [TOOL…]` asks the running gateway's admin listener
//!   what the upstream's lists showed (`GET /integrity`) and prints, for each definition that
//!   differs from its pin or has none, a member-by-member diff. Exit 0 when nothing differs,
//!   1 when something does.
//! - `pins approve --config FILE UPSTREAM [TOOL…]` writes the definitions the gateway saw to
//!   the pins file (all that differ or are new, or the named ones); a reload (SIGHUP,
//!   `POST /reload`, `watch_config`) or a restart applies them. `--reload` asks for the
//!   reload at once.
//! - `approvals list --config FILE`, `approvals approve|deny --config FILE ID` list and
//!   decide the calls held for a decision (`GET /approvals`, `POST /approvals/ID`).

use crate::config::{self, Settings};
use mcp_gateway_layers::integrity::canon;
use mcp_gateway_layers::integrity::pins::{Pin, Pins};
use serde_json::{json, Value};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// A failure of a pins or approvals command, printed as `error: …` (exit 2).
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn load(path: &Path) -> Result<Settings, CliError> {
    config::load(path).map_err(|errors| {
        CliError(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// The admin listener of the configuration's gateway.
fn admin(settings: &Settings, file: &Path) -> Result<SocketAddr, CliError> {
    let addr = settings.admin.as_ref().map(|a| a.listen).ok_or_else(|| {
        CliError(format!(
            "{}: no [admin] listen: the command talks to the running gateway's admin listener",
            file.display()
        ))
    })?;
    // A wildcard address is reached on loopback.
    Ok(match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    })
}

/// One HTTP/1.1 exchange with the admin listener: the status and the body.
pub fn admin_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), CliError> {
    let fail = |e: std::io::Error| {
        CliError(format!(
            "the gateway's admin listener at {addr} does not answer ({e}); is the gateway running?"
        ))
    };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(fail)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(fail)?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CliError(format!("unexpected answer from {addr}")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let value =
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.trim().to_owned()));
    Ok((status, value))
}

fn error_of(v: &Value) -> String {
    v.get("error")
        .and_then(Value::as_str)
        .map_or_else(|| v.to_string(), str::to_owned)
}

fn who() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "operator".to_owned())
}

fn pins_file(settings: &Settings, file: &Path) -> Result<std::path::PathBuf, CliError> {
    settings
        .integrity
        .as_ref()
        .and_then(|i| i.pins.as_ref())
        .map(|p| p.pins_file.clone())
        .ok_or_else(|| CliError(format!("{}: no [integrity] pins_file", file.display())))
}

/// `pins list`: the pins file's entries, one per line.
pub fn pins_list(
    file: &Path,
    upstream: Option<&str>,
    names: &[String],
) -> Result<ExitCode, CliError> {
    let settings = load(file)?;
    let path = pins_file(&settings, file)?;
    if let Some(u) = upstream.filter(|u| !settings.upstreams.iter().any(|s| s.name == *u)) {
        return Err(CliError(format!(
            "{}: no upstream named {u:?}",
            file.display()
        )));
    }
    let pins = Pins::load(&path).map_err(|e| CliError(e.to_string()))?;
    let mut any = false;
    for (up, u) in &pins.upstreams {
        if upstream.is_some_and(|x| x != up) {
            continue;
        }
        for (kind, map) in [("tool", &u.tools), ("prompt", &u.prompts)] {
            for (name, pin) in map {
                if !names.is_empty() && !names.contains(name) {
                    continue;
                }
                any = true;
                println!(
                    "{up}\t{kind}\t{name}\t{}\t{}\t{}",
                    pin.digest,
                    pin.approved_by.as_deref().unwrap_or("-"),
                    pin.approved_at.as_deref().unwrap_or("-")
                );
            }
        }
    }
    if !any {
        eprintln!(
            "{}: nothing pinned{}",
            path.display(),
            upstream.map(|u| format!(" for {u}")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What the gateway saw of `upstream`, per definition.
fn observed(settings: &Settings, file: &Path, upstream: &str) -> Result<Vec<Value>, CliError> {
    let addr = admin(settings, file)?;
    let (status, v) = admin_call(
        addr,
        "GET",
        &format!("/integrity?upstream={upstream}"),
        None,
    )?;
    // 404 with the layer on: the gateway has not seen this upstream listed yet.
    if status == 404 && !error_of(&v).contains("[integrity]") {
        return Ok(Vec::new());
    }
    if status != 200 {
        return Err(CliError(format!(
            "GET /integrity: {status}: {}",
            error_of(&v)
        )));
    }
    Ok(v.get(upstream)
        .and_then(|u| u.get("definitions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

fn differs(d: &Value) -> bool {
    matches!(
        d.get("status").and_then(Value::as_str),
        Some("changed" | "unpinned" | "unpinned_upstream")
    )
}

/// `pins diff`: every definition that differs from its pin or has none.
pub fn pins_diff(file: &Path, upstream: &str, names: &[String]) -> Result<ExitCode, CliError> {
    let settings = load(file)?;
    if !settings.upstreams.iter().any(|s| s.name == upstream) {
        return Err(CliError(format!(
            "{}: no upstream named {upstream:?}",
            file.display()
        )));
    }
    let defs = observed(&settings, file, upstream)?;
    if defs.is_empty() {
        return Err(CliError(format!(
            "{upstream}: the gateway has seen no list of it yet, so nothing was compared (a client's tools/list or prompts/list shows it)"
        )));
    }
    let mut differences = 0;
    for d in &defs {
        let name = d.get("name").and_then(Value::as_str).unwrap_or("");
        if (!names.is_empty() && !names.iter().any(|n| n == name)) || !differs(d) {
            continue;
        }
        differences += 1;
        let kind = d.get("kind").and_then(Value::as_str).unwrap_or("tool");
        let current = d.get("current").cloned().unwrap_or(Value::Null);
        match d.get("status").and_then(Value::as_str) {
            Some("changed") => {
                let pinned = d.get("pinned").cloned().unwrap_or(Value::Null);
                println!(
                    "{upstream}: {kind} {name}: changed\n  pinned  {}\n  current {}",
                    d["pinned_digest"].as_str().unwrap_or(""),
                    d["current_digest"].as_str().unwrap_or("")
                );
                print!("{}", canon::render_diff(&canon::diff(&pinned, &current)));
            }
            _ => {
                println!(
                    "{upstream}: {kind} {name}: new (no pin)\n  current {}\n    + {}",
                    d["current_digest"].as_str().unwrap_or(""),
                    String::from_utf8_lossy(&canon::canonical(&current))
                );
            }
        }
    }
    if differences == 0 {
        println!("{upstream}: every definition seen matches its pin");
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::from(1))
}

/// `pins approve`: pins what the gateway saw.
pub fn pins_approve(
    file: &Path,
    upstream: &str,
    names: &[String],
    by: Option<&str>,
    reload: bool,
) -> Result<ExitCode, CliError> {
    let settings = load(file)?;
    let path = pins_file(&settings, file)?;
    if !settings.upstreams.iter().any(|u| u.name == upstream) {
        return Err(CliError(format!(
            "{}: no upstream named {upstream:?}",
            file.display()
        )));
    }
    let defs = observed(&settings, file, upstream)?;
    let chosen: Vec<&Value> = defs
        .iter()
        .filter(|d| {
            let name = d.get("name").and_then(Value::as_str).unwrap_or("");
            d.get("current").is_some_and(|c| !c.is_null())
                && if names.is_empty() {
                    differs(d)
                } else {
                    names.iter().any(|n| n == name)
                }
        })
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            !chosen
                .iter()
                .any(|d| d["name"].as_str() == Some(n.as_str()))
        })
        .collect();
    if !missing.is_empty() {
        return Err(CliError(format!(
            "{upstream}: the gateway has not seen {} listed; a client's list shows them to it",
            missing
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if chosen.is_empty() {
        println!("{upstream}: nothing to approve (every definition seen matches its pin)");
        return Ok(ExitCode::SUCCESS);
    }
    let by = by.map_or_else(who, str::to_owned);
    let mut approved = Vec::new();
    for d in &chosen {
        let current = d["current"].clone();
        // The definition is digested here again: what is pinned is what is written.
        let digest = canon::digest(&current);
        if d["current_digest"].as_str() != Some(digest.as_str()) {
            return Err(CliError(format!(
                "{upstream}: the digest the gateway reported for {} is not its definition's",
                d["name"]
            )));
        }
        approved.push((
            d["kind"].as_str().unwrap_or("tool").to_owned(),
            d["name"].as_str().unwrap_or("").to_owned(),
            current,
        ));
    }
    Pins::update(&path, |p| {
        let up = p.upstreams.entry(upstream.to_owned()).or_default();
        for (kind, name, def) in &approved {
            let map = if kind == "prompt" {
                &mut up.prompts
            } else {
                &mut up.tools
            };
            map.insert(name.clone(), Pin::of(def.clone(), &by));
        }
    })
    .map_err(|e| CliError(e.to_string()))?;
    for (kind, name, def) in &approved {
        println!(
            "{upstream}: {kind} {name}: approved {} by {by}",
            canon::digest(def)
        );
    }
    println!("written to {}", path.display());
    if reload {
        let addr = admin(&settings, file)?;
        let (status, v) = admin_call(addr, "POST", "/reload", None)?;
        if status != 200 {
            return Err(CliError(format!("POST /reload: {status}: {v}")));
        }
        println!("the gateway reloaded: the pins apply");
    } else {
        println!("a reload (SIGHUP, POST /reload on the admin listener, or watch_config) or a restart applies them");
    }
    Ok(ExitCode::SUCCESS)
}

/// `approvals list`.
pub fn approvals_list(file: &Path, as_json: bool) -> Result<ExitCode, CliError> {
    let settings = load(file)?;
    let addr = admin(&settings, file)?;
    let (status, v) = admin_call(addr, "GET", "/approvals", None)?;
    if status != 200 {
        return Err(CliError(format!(
            "GET /approvals: {status}: {}",
            error_of(&v)
        )));
    }
    let calls = v.as_array().cloned().unwrap_or_default();
    if as_json {
        for c in &calls {
            println!("{c}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if calls.is_empty() {
        println!("no call is waiting for a decision");
    }
    for c in &calls {
        println!(
            "{}  {}/{}  agent {}  since {}  expires {}\n  arguments {}  ({})\n  definition {}",
            c["id"].as_str().unwrap_or(""),
            c["upstream"].as_str().unwrap_or(""),
            c["tool"].as_str().unwrap_or(""),
            c["principal"]["agent"].as_str().unwrap_or(""),
            c["requested_at"].as_str().unwrap_or(""),
            c["expires_at"].as_str().unwrap_or(""),
            c["arguments"],
            c["arguments_digest"].as_str().unwrap_or(""),
            c["definition_digest"].as_str().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `approvals approve|deny ID`.
pub fn approvals_decide(
    file: &Path,
    id: &str,
    approve: bool,
    by: Option<&str>,
    arguments_digest: Option<&str>,
    definition_digest: Option<&str>,
) -> Result<ExitCode, CliError> {
    let settings = load(file)?;
    let addr = admin(&settings, file)?;
    let mut body = json!({"decision": if approve { "approve" } else { "deny" }, "by": by.map_or_else(who, str::to_owned)});
    if let Some(d) = arguments_digest {
        body["arguments_digest"] = json!(d);
    }
    if let Some(d) = definition_digest {
        body["definition_digest"] = json!(d);
    }
    let (status, v) = admin_call(addr, "POST", &format!("/approvals/{id}"), Some(&body))?;
    if status != 200 {
        return Err(CliError(error_of(&v)));
    }
    println!(
        "{id}: {} ({}/{} for agent {})",
        v["decision"].as_str().unwrap_or(""),
        v["call"]["upstream"].as_str().unwrap_or(""),
        v["call"]["tool"].as_str().unwrap_or(""),
        v["call"]["principal"]["agent"].as_str().unwrap_or("")
    );
    Ok(ExitCode::SUCCESS)
}
