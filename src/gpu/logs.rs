//! What a failed run's logs say about its GPUs: a device out of memory, or
//! a device error, in the words of PyTorch, CUDA, cuBLAS, candle or XLA.

use super::*;

/// What a failed run's logs say about its GPU: out of memory, or a line
/// that blames the device rather than the program.
#[derive(Debug, Default, PartialEq)]
pub struct LogVerdict {
    pub out_of_memory: bool,
    pub device_error: Option<String>,
}

/// Lower-case phrases of frameworks' device out-of-memory errors (PyTorch,
/// CUDA runtime and driver, cuBLAS, candle through cudarc, XLA).
const OOM: &[&str] = &[
    "cuda out of memory",
    "outofmemoryerror",
    "cuda_error_out_of_memory",
    "cudaerrormemoryallocation",
    "cuda error: out of memory",
    "cublas_status_alloc_failed",
    "resource_exhausted: out of memory",
];

/// Lower-case phrases that blame the device or its driver.
const DEVICE: &[&str] = &[
    "uncorrectable ecc error",
    "cuda_error_ecc_uncorrectable",
    "fallen off the bus",
    "gpu is lost",
    "no cuda-capable device is detected",
    "cuda_error_no_device",
    "busy or unavailable",
    "cuda_error_devices_unavailable",
    "driver/library version mismatch",
    "cuda_error_system_not_ready",
    "cuda_error_hardware_stack_error",
];

/// Reads the last 64 KiB of a failed run's logs for device errors.
pub fn read_logs(paths: &[&Path]) -> LogVerdict {
    let mut verdict = LogVerdict::default();
    for path in paths {
        let text = crate::process::log_tail(path, 64 * 1024);
        for line in text.lines() {
            let lower = line.to_lowercase();
            if OOM.iter().any(|p| lower.contains(p)) {
                verdict.out_of_memory = true;
            } else if verdict.device_error.is_none() && DEVICE.iter().any(|p| lower.contains(p)) {
                verdict.device_error = Some(line.trim().chars().take(200).collect());
            }
        }
    }
    verdict
}
