//! The markdown report written to docs/BENCHMARKS.md.

pub(crate) struct Report {
    text: String,
}

impl Report {
    pub(crate) fn new(command: &str) -> Self {
        let text = format!(
            "# Benchmarks\n\nMade by `{command}` on {} UTC.\n\nMachine: {}.\n\n\
             Every figure is measured in the same run as its baseline, on the same machine and \
             services: these 2-core machines are noisy, so read the ratios. The load generator, \
             the services and PostgreSQL share the two cores.\n\n\
             Targets (issue 6): api >= 10,000 durable creates/s and >= 7x pgbench's one rsvp per \
             transaction, p99 < 50 ms; relay drain >= 50k rows/s and >= 0.8x raw produce, peak RSS \
             < 100 MB with a 1M backlog, keeping up with the api at full rate (backlog bounded); commit-to-ack p99 < 20 ms and commit-to-cache-invalidated \
             p99 < 50 ms at 1000 writes/s.\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M"),
            crate::system::machine(),
        );
        Self { text }
    }

    pub(crate) fn section(&mut self, title: &str, body: &str) {
        self.text.push_str(&format!("\n## {title}\n\n{body}"));
        eprintln!("\n## {title}\n\n{body}");
    }

    pub(crate) fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(path, &self.text)?;
        Ok(())
    }
}
