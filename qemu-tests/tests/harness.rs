//! Checks of the harness itself, without any disk server: a failing script
//! is reported with its exit code, and a hung guest is killed at the
//! deadline instead of hanging the test.

use anyhow::{ensure, Result};
use std::time::{Duration, Instant};
use strata_qemu_tests::{GuestImage, Vm};

#[test]
fn failing_script_reports_exit_code_and_console() -> Result<()> {
    let image = GuestImage::shared()?;
    let out = Vm::new().run(image, "echo about-to-fail\nexit 3\n")?;
    ensure!(out.exit_code == 3, "exit code {}", out.exit_code);
    ensure!(!out.passed());
    ensure!(
        out.console.lines().any(|l| l == "about-to-fail"),
        "console lacks the script output:\n{}",
        out.console
    );
    let err = out
        .require_pass()
        .expect_err("a failing script must not pass");
    ensure!(format!("{err:#}").contains("about-to-fail"));
    Ok(())
}

#[test]
fn hung_guest_is_killed_at_the_deadline() -> Result<()> {
    let image = GuestImage::shared()?;
    let timeout = Duration::from_secs(10);
    let started = Instant::now();
    let result = Vm::new()
        .timeout(timeout)
        .run(image, "echo hanging\nwhile :; do sleep 1; done\n");
    let elapsed = started.elapsed();
    let err = result.expect_err("a guest that never finishes must be an error");
    ensure!(
        format!("{err:#}").contains("did not finish within"),
        "unexpected error: {err:#}"
    );
    // The guest must have been given its full time before being killed.
    // There is no upper bound here: a harness that never kills the guest
    // hangs this test, and CI's own timeout reports that.
    ensure!(elapsed >= timeout, "killed early, after {elapsed:?}");
    Ok(())
}
