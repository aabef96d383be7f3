//! Relinks libresidue.so when its link order changes: .cargo/config.toml links it through
//! link/cc-hot-first, which reads link/hot-functions.txt, and cargo tracks neither by itself.
fn main() {
    println!("cargo:rerun-if-changed=link/cc-hot-first");
    println!("cargo:rerun-if-changed=link/hot-functions.txt");
}
