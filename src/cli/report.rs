//! Progress for a person on stderr (indicatif), nothing with `--quiet`: the CLI's [`Observer`].

use crate::pipeline::Observer;
use crate::train::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

/// A spinner for phases without steps, a bar over the training steps of each training phase, and
/// log lines printed above them. Hidden when quiet (errors still reach stderr through `main`).
pub struct Reporter {
    quiet: bool,
    bar: Mutex<Option<(ProgressBar, [&'static str; 4])>>,
}

impl Reporter {
    pub fn new(quiet: bool) -> Self {
        Reporter { quiet, bar: Mutex::new(None) }
    }
}

/// The running means a training phase reports, by the phase's name.
fn step_names(phase: &str) -> [&'static str; 4] {
    if phase.starts_with("pretrain") { ["nELBO", "NLL", "KL_z", "KL_l"] } else { ["loss", "NLL", "KL_z", "eta*Align"] }
}

impl Observer for Reporter {
    fn log(&self, line: &str) {
        if self.quiet {
            return;
        }
        match self.bar.lock().unwrap().as_ref() {
            Some((b, _)) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    /// Warnings too are silent with `--quiet` (`metrics.json` lists them).
    fn warn(&self, line: &str) {
        if self.quiet {
            return;
        }
        let line = format!("warning: {line}");
        match self.bar.lock().unwrap().as_ref() {
            Some((b, _)) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn phase(&self, name: &str, steps: u64) {
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else if steps == 0 {
            let pb = ProgressBar::new_spinner();
            pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").unwrap());
            pb.set_message(name.to_string());
            pb.enable_steady_tick(std::time::Duration::from_millis(120));
            pb
        } else {
            let pb = ProgressBar::new(steps);
            pb.set_style(
                ProgressStyle::with_template("{prefix} [{bar:25}] {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            pb.set_prefix(name.to_string());
            pb
        };
        if let Some((old, _)) = self.bar.lock().unwrap().replace((bar, step_names(name))) {
            old.finish_and_clear();
        }
    }

    fn step(&self, p: &Progress) {
        if let Some((b, names)) = self.bar.lock().unwrap().as_ref() {
            b.inc(1);
            b.set_message(step_message(p, *names));
        }
    }

    fn phase_done(&self) {
        if let Some((b, _)) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
    }
}

/// The progress bar's message after a training step: position, speed and the four running means.
fn step_message(p: &Progress, names: [&str; 4]) -> String {
    let r = &p.running;
    format!(
        "epoch {}/{} step {}/{} | {:.1} ms/step | {} {:.1} {} {:.1} {} {:.2} {} {:.3}",
        p.epoch + 1,
        p.epochs,
        p.step + 1,
        p.steps,
        p.ms_per_step,
        names[0],
        r[0],
        names[1],
        r[1],
        names[2],
        r[2],
        names[3],
        r[3]
    )
}
