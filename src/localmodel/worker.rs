//! `ratchet llm-worker --model FILE`: loads the model, writes one `Ready`
//! line (or an `Error` line and exits), then answers each request line on
//! stdin with one line on stdout until stdin closes. It dies with the
//! process that started it (`PR_SET_PDEATHSIG`), so a killed ratchet leaves
//! no model behind.

use std::io::{BufRead, Write};
use std::path::Path;

use candle_core::Device;

use super::engine::Engine;
use super::{Answer, Request};

/// The device a worker runs on: `cpu`, or `cuda:N` in a build with `--features cuda`.
pub fn device(name: &str) -> Result<Device, String> {
    match name {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let index = name
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("device `{name}`: expected `cpu` or `cuda:N`"))?;
            Device::new_cuda(index).map_err(|e| {
                format!("device `{name}`: {e} (CUDA devices need a build with --features cuda)")
            })
        }
    }
}

fn send(out: &mut impl Write, answer: &Answer) -> Result<(), String> {
    let line = serde_json::to_string(answer).map_err(|e| e.to_string())?;
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("cannot write to ratchet: {e}"))
}

pub fn run(model: &Path, device_name: &str) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Ok(info) = super::inspect(model) {
        if super::dense(&info) {
            // Read by candle as it loads each matrix; no other thread runs yet.
            std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
        }
    }
    let loaded = device(device_name).and_then(|d| Engine::load(model, d));
    let mut engine = match loaded {
        Ok(e) => e,
        Err(e) => {
            send(&mut out, &Answer::Error(e.clone()))?;
            return Err(e);
        }
    };
    send(&mut out, &Answer::Ready(engine.info.clone()))?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("cannot read from ratchet: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(request) => match engine.generate(&request) {
                Ok(reply) => Answer::Reply(reply),
                Err(e) => Answer::Error(e),
            },
            Err(e) => Answer::Error(format!("not a request: {e}")),
        };
        send(&mut out, &answer)?;
    }
    Ok(())
}
