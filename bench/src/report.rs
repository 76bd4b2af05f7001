//! The markdown report written to docs/BENCHMARKS.md.

pub(crate) struct Report {
    text: String,
}

impl Report {
    pub(crate) fn new(command: &str) -> Self {
        let text = format!(
            "# Benchmarks\n\nMade by `{command}` on {} UTC.\n\nMachine: {}.\n\n\
             Every figure is measured in the same run as its baseline, on the same machine and \
             services: these 2-core machines are noisy, so read the ratios.\n",
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
