//! The `tessera` binary that cargo built for these tests, run as a command.

/// Runs `tessera ARGS` with `env` added to the environment; returns (exit code, stdout, stderr),
/// the exit code -1 when a signal ended it.
pub fn tessera(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
