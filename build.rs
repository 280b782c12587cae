//! Links the `floe` executable at a fixed address rather than as a
//! position-independent executable (PIE).
//!
//! Why: a PIE's dynamic loader applies every relative relocation at each
//! start (~244,000 in floe: DataFusion's and arrow's vtables and tables),
//! writing to ~1,000 pages of `.data.rel.ro` that the kernel must first copy.
//! That was 2.5 ms of the 3.9 ms a release `floe --version` took, and it is
//! paid before `main` on the path of every run (BENCHMARKS.md). A fixed
//! address needs none. The price is that the executable's own image is not
//! randomized (its libraries, heap, stacks and mappings still are), as with
//! Go's default executables on Linux. `FLOE_LINK_PIE=1` at build time keeps
//! the toolchain's default.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FLOE_LINK_PIE");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let keep_pie = std::env::var_os("FLOE_LINK_PIE").is_some_and(|v| v != "0" && !v.is_empty());
    // Measured only for the GNU toolchain's dynamically linked
    // executables; other targets keep their defaults.
    if os == "linux" && env == "gnu" && !keep_pie {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
