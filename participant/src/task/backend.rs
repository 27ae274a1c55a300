//! Where training runs: burn's pure-Rust `flex` CPU backend by default, or a GPU through
//! `wgpu`/`cuda` when the matching feature is compiled in.

use crate::Error;
use ::burn::tensor::Device;

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// burn's pure-Rust CPU backend (`flex`).
    #[default]
    Cpu,
    /// The first GPU, through wgpu (Vulkan, Metal or DX12); needs the `wgpu` feature.
    Wgpu,
    /// The first CUDA GPU; needs the `cuda` feature.
    Cuda,
}

impl Backend {
    /// Parses a command-line name: `cpu`, `wgpu` or `cuda`.
    pub fn parse(text: &str) -> Result<Backend, Error> {
        match text {
            "cpu" => Ok(Backend::Cpu),
            "wgpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            _ => Err(Error::UnknownBackend { name: text.into() }),
        }
    }

    /// The device to build a model on: this backend with automatic differentiation, so that the
    /// model can be trained.
    pub fn device(self) -> Result<Device, Error> {
        let device = match self {
            Backend::Cpu => Device::flex(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(::burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Device::cuda(0),
            #[allow(unreachable_patterns)] // Reached only when a GPU feature is not compiled in.
            other => {
                return Err(Error::Backend(format!(
                    "backend {other:?} is not compiled into this binary; rebuild with `--features {}`",
                    if other == Backend::Cuda {
                        "cuda"
                    } else {
                        "wgpu"
                    }
                )));
            }
        };
        Ok(device.autodiff())
    }
}
