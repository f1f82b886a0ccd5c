fn main() {
    // embed_migrations! is not re-run when a migration directory is added; this forces it.
    println!("cargo:rerun-if-changed=migrations");
}
