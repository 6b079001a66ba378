//! Configuration loading (`config::load`): TOML text plus `MAILVALVE__*` environment
//! overrides, then validation. Input: the TOML text, a NUL, then `NAME=value` lines of
//! environment (a name without the `MAILVALVE__` prefix gets it). Never a panic; and a
//! password given in the environment never appears in an error, a validation message or
//! the effective settings as `mailvalve check` prints them (unless the input itself
//! contains it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailvalve::config::load::load_str;
use mailvalve::config::{validate, warnings};

const SECRET: &str = "Fz-pw-7Qx2Lm9Zt4Rk";

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let text = String::from_utf8_lossy(text);
    let mut vars: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let k = if k.starts_with("MAILVALVE__") {
                k.to_string()
            } else {
                format!("MAILVALVE__{k}")
            };
            (k, v.to_string())
        })
        .collect();
    vars.push(("MAILVALVE__UPSTREAM__PASSWORD".into(), SECRET.into()));
    let may_leak = data.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());

    match load_str(&text, "fuzz.toml", vars) {
        Ok(loaded) => {
            let mut c = loaded.config;
            // Validation reads the files named by these keys; not the fuzzer's business.
            c.server.tls = None;
            c.upstream.ca_file = None;
            let mut said = String::new();
            if let Err(problems) = validate(&c) {
                for p in problems {
                    said.push_str(&p.to_string());
                }
            }
            for w in warnings(&c) {
                said.push_str(&w.to_string());
            }
            said.push_str(&format!("{c:?}"));
            said.push_str(&serde_json::to_string(&c).unwrap_or_default());
            assert!(
                may_leak || !said.contains(SECRET),
                "password leaked: {said}"
            );
        }
        Err(e) => {
            let said = e.to_string();
            assert!(
                may_leak || !said.contains(SECRET),
                "password leaked: {said}"
            );
        }
    }
});
