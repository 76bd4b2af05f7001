// Rebuild when a migration is added: `sqlx::migrate!` in `runtime::database` embeds the directory.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
