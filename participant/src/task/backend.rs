//! Where training runs: burn's pure-Rust `flex` CPU backend by default; LibTorch's CPU kernels
//! through `tch`, or a GPU through `wgpu`/`cuda`, when the matching feature is compiled in. The
//! table in `examples/README.md` says which is fastest for which network.

use crate::Error;
use ::burn::tensor::Device;

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// burn's pure-Rust CPU backend (`flex`): needs nothing but cargo to build.
    #[default]
    Cpu,
    /// LibTorch on the CPU (burn's `tch` backend, deprecated by burn): PyTorch's own kernels,
    /// fastest for convolutions; needs the `tch` feature and a PyTorch 2.9.0 install to build
    /// and run.
    Tch,
    /// The first GPU, through wgpu (Vulkan, Metal or DX12); needs the `wgpu` feature.
    Wgpu,
    /// The first CUDA GPU; needs the `cuda` feature.
    Cuda,
}

impl Backend {
    /// Parses a command-line name: `cpu`, `tch`, `wgpu` or `cuda`.
    pub fn parse(text: &str) -> Result<Backend, Error> {
        match text {
            "cpu" => Ok(Backend::Cpu),
            "tch" => Ok(Backend::Tch),
            "wgpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            _ => Err(Error::UnknownBackend { name: text.into() }),
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Tch => "tch",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }

    /// The device to build a model on: this backend with automatic differentiation, so that the
    /// model can be trained.
    pub fn device(self) -> Result<Device, Error> {
        let device = match self {
            Backend::Cpu => Device::flex(),
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            // burn 0.22 deprecates LibTorch; nothing else matches it on CPU.
            Backend::Tch => Device::libtorch(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(::burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Device::cuda(0),
            #[allow(unreachable_patterns)] // Reached only when a feature is not compiled in.
            other => {
                return Err(Error::Backend(format!(
                    "backend {} is not compiled into this binary; rebuild with `--features {}`",
                    other.name(),
                    other.name()
                )));
            }
        };
        Ok(device.autodiff())
    }
}

/// Sets how many threads CPU training computes with, for every backend compiled in. burn's
/// `flex` runs its kernels on rayon's global pool, which every site in the process shares, so a
/// simulation of many sites uses these threads in all rather than each site its own; LibTorch
/// gives each thread that trains this many. Without a call, both use one thread per core the
/// process may use: its CPU affinity and cgroup quota (a Kubernetes CPU limit). Call it once,
/// before anything trains.
pub fn set_threads(threads: usize) -> Result<(), Error> {
    if threads == 0 {
        return Err(Error::Backend("0 threads; expected at least 1".into()));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| {
            Error::Backend(format!(
                "cannot set {threads} threads: {e} (the pool is set once, before training)"
            ))
        })?;
    #[cfg(feature = "tch")]
    tch::set_num_threads(threads as i32);
    Ok(())
}

/// The threads CPU training computes with (see [`set_threads`]).
pub fn threads() -> usize {
    rayon::current_num_threads()
}
