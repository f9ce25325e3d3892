// `sqlx::migrate!` embeds migrations/ at compile time; without this, adding a migration
// does not rebuild the crate and tests run against the old set.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
