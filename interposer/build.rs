//! Relinks libresidue.so when its link order changes: .cargo/config.toml links it through
//! link/cc-hot-first, which reads link/hot-functions.txt, and cargo tracks neither by itself.
//!
//! And links its code on pages of its own (`-z separate-code`, GNU ld's default, not lld's):
//! lld starts `.text` right after the read-only data, so the hot functions' offset within a
//! page moved with the size of unrelated tables and strings; 128 bytes of it moved W3 by 4%
//! (README.md, Performance). Page-aligned, the hot code's placement depends only on itself.
//!
//! And places the PLT before the code and the exception tables after it (link/layout.ld says
//! why).
fn main() {
    println!("cargo:rerun-if-changed=link/cc-hot-first");
    println!("cargo:rerun-if-changed=link/hot-functions.txt");
    println!("cargo:rerun-if-changed=link/layout.ld");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,separate-code");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{dir}/link/layout.ld");
}
