//! The request path end to end, before any upstream: a request head (method, version, header
//! fields) and a body go through the listener's head checks and the read-and-classify step.
//! Whatever the bytes, the answer is a refusal with a 4xx status and a JSON-RPC error body, or
//! a view whose body is exactly the bytes sent; nothing panics and the read never waits (the
//! body is whole).
//!
//! Input: `METHOD [2]` on the first line (`2`: HTTP/2), then `name: value` lines, an empty line,
//! and the body.
#![no_main]

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Version};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use mcp_gateway_layers::head::HeadCheck;
use mcp_gateway_layers::parse::ReadRequest;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

const LIMIT: usize = 4096;

fn ready<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a whole body was waited for"),
    }
}

fn assert_refusal(resp: http::Response<Full<Bytes>>) {
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let body = ready(resp.into_body().collect()).unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON-RPC error body");
    assert!(v["error"]["code"].is_i64(), "{v}");
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut words = first.split(|&b| b == b' ');
    let method = Method::from_bytes(words.next().unwrap_or_default()).unwrap_or(Method::POST);
    let version = if words.next() == Some(b"2") {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let mut req = Request::builder().method(method).uri("/mcp").version(version);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        req = req.header(name, value);
    }
    let Ok(req) = req.body(Full::new(Bytes::copy_from_slice(body))) else {
        return;
    };
    if let Some(refusal) = HeadCheck::new().max_header_bytes(1024).refusal(&req) {
        assert_refusal(refusal);
        return;
    }
    match ready(ReadRequest::new(req, LIMIT)) {
        Ok((req, view)) => {
            let read = ready(req.into_body().collect()).unwrap().to_bytes();
            if let Some(seen) = view.body() {
                assert_eq!(&seen[..], body);
                assert_eq!(&read[..], body);
            }
        }
        Err(resp) => assert_refusal(resp),
    }
});
