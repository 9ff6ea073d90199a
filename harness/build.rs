//! Recompiles the scenario test when a file is added to or removed from
//! `scenarios/`: its cases are generated from that directory (rstest's
//! `#[files]`), which cargo does not watch by itself.
fn main() {
    println!("cargo:rerun-if-changed=../scenarios");
}
