//! Which kernels the layers run: this CPU's own (AVX-512, where it has it) or the
//! portable ones (the `gemm` crate's, as Candle runs them everywhere).
//!
//! Both give the same bits on an x86-64 CPU with FMA (docs/determinism.md: the order of
//! the multiply-adds, not the vector width, decides the rounding). `WDML_KERNELS=portable`
//! forces the portable path on a CPU that has AVX-512, so that the path every other CPU
//! takes is exercised — and checked against the same golden figures (tests/golden.rs)
//! — on the machines the project is built on. It is read once, here, and feeds every
//! dispatch in `gemm.rs` and `ops.rs`.

use std::sync::OnceLock;

/// The environment variable that chooses the kernels.
pub const VAR: &str = "WDML_KERNELS";

/// The kernels a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// The fastest this CPU has: the AVX-512 kernels where it has AVX-512F and FMA, the
    /// portable ones elsewhere (the default).
    Native,
    /// The `gemm` crate's kernels only, as on a CPU without AVX-512.
    Portable,
}

impl Kernels {
    /// Reads [`VAR`]: unset or `native` is [`Kernels::Native`], `portable` is
    /// [`Kernels::Portable`]; anything else is an error naming the variable and the
    /// values it takes.
    pub fn from_env() -> Result<Kernels, String> {
        match std::env::var(VAR) {
            Err(std::env::VarError::NotPresent) => Ok(Kernels::Native),
            Ok(value) => match value.as_str() {
                "native" | "" => Ok(Kernels::Native),
                "portable" => Ok(Kernels::Portable),
                other => Err(format!(
                    "{VAR}={other:?}: expected `native` (the default: AVX-512 where the CPU has it) or `portable` \
                     (the gemm crate's kernels only)"
                )),
            },
            Err(std::env::VarError::NotUnicode(value)) => {
                Err(format!("{VAR}={value:?}: expected `native` or `portable`"))
            }
        }
    }

    /// The kernels of this process, read from [`VAR`] once. The node and the `wdml`
    /// binary refuse a bad value at start ([`Kernels::from_env`]); a library user who skipped that
    /// gets the portable kernels, which compute the same bits.
    pub fn active() -> Kernels {
        static ACTIVE: OnceLock<Kernels> = OnceLock::new();
        *ACTIVE.get_or_init(|| Kernels::from_env().unwrap_or(Kernels::Portable))
    }

    /// Whether the matrix product runs the AVX-512 kernel (`gemm.rs`).
    pub fn avx512(self) -> bool {
        self == Kernels::Native && cpu::avx512f()
    }

    /// Whether a first convolution layer runs its direct AVX-512 kernel (`ops.rs`): it
    /// needs FMA too, which is what makes `gemm` fuse its multiply-adds in the order the
    /// kernel follows.
    pub fn avx512_fma(self) -> bool {
        self == Kernels::Native && cpu::avx512f() && cpu::fma()
    }

    /// What the layers run, for logs and benchmarks.
    pub fn describe(self) -> &'static str {
        match (self, self.avx512()) {
            (Kernels::Native, true) => "native (AVX-512)",
            (Kernels::Native, false) => "native (this CPU has no AVX-512: the gemm crate's kernels)",
            (Kernels::Portable, _) => "portable (the gemm crate's kernels, WDML_KERNELS=portable)",
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod cpu {
    pub fn avx512f() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }
    pub fn fma() -> bool {
        std::is_x86_feature_detected!("fma")
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod cpu {
    pub fn avx512f() -> bool {
        false
    }
    pub fn fma() -> bool {
        false
    }
}
