//! How `migrate copy` shows its progress: bars per table on a terminal, log lines otherwise.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use interview_store::migrate::{Progress, Table};

/// Bars per table on a terminal; a log line per batch otherwise.
pub fn reporter() -> Arc<dyn Fn(&Progress) + Send + Sync> {
    if !std::io::stderr().is_terminal() {
        return Arc::new(|p: &Progress| log::info!("{}: {}/{} rows", p.table, p.done, p.total));
    }
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:>9} {bar:40} {pos}/{len} rows {per_sec} eta {eta}")
            .expect("valid template");
    let bars: Mutex<Vec<(Table, ProgressBar)>> = Mutex::new(Vec::new());
    Arc::new(move |p: &Progress| {
        let mut bars = bars.lock().expect("progress lock");
        if !bars.iter().any(|(t, _)| *t == p.table) {
            let bar = multi.add(ProgressBar::new(p.total).with_style(style.clone()));
            bar.set_prefix(p.table.as_str());
            bar.enable_steady_tick(Duration::from_millis(200));
            bars.push((p.table, bar));
        }
        for (t, bar) in bars.iter() {
            if *t == p.table {
                bar.set_position(p.done);
                if p.done >= p.total {
                    bar.finish();
                }
            }
        }
    })
}
