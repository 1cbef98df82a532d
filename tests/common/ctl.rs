//! `phoenixfsd ctl` as the tests run it, and numbers read out of its `status --json`.

use std::path::Path;
use std::process::Command;

/// Runs `phoenixfsd ctl --socket <socket> <args>`: exit code, stdout, stderr.
pub fn ctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(super::BIN).arg("ctl").arg("--socket").arg(socket).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A number after `"key":` in a one-line JSON object.
pub fn json_num(json: &str, key: &str) -> u64 {
    let rest = json.split(&format!("\"{key}\":")).nth(1).unwrap_or_else(|| panic!("no {key} in {json}"));
    rest.split([',', '}']).next().unwrap().parse().unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// The numbers of the array after `"key":` in a one-line JSON object.
pub fn json_nums(json: &str, key: &str) -> Vec<u64> {
    let rest = json.split(&format!("\"{key}\":[")).nth(1).unwrap_or_else(|| panic!("no {key} array in {json}"));
    let list = rest.split(']').next().unwrap();
    list.split(',').filter(|n| !n.is_empty()).map(|n| n.parse().unwrap_or_else(|_| panic!("{key}: {n}"))).collect()
}
