//! The one place where a cargo feature becomes a concrete burn backend.
//!
//! - `flex` (default): burn's CPU backend, the fastest on CPU in burn 0.21.
//! - `ndarray`: burn's ndarray CPU backend.
//! - `cuda`: NVIDIA GPUs through CubeCL (needs the driver and NVRTC at run time).
//!
//! Everything else in kiln is generic over `B: Backend`; the binary instantiates it here once.

#[cfg(feature = "cuda")]
pub type Inference = burn::backend::Cuda;
#[cfg(all(feature = "flex", not(feature = "cuda")))]
pub type Inference = burn::backend::Flex;
#[cfg(all(feature = "ndarray", not(feature = "flex"), not(feature = "cuda")))]
pub type Inference = burn::backend::NdArray;
#[cfg(not(any(feature = "flex", feature = "ndarray", feature = "cuda")))]
compile_error!("enable one backend feature: flex (default), ndarray or cuda");

/// The training backend: autodiff over [`Inference`].
pub type Training = burn::backend::Autodiff<Inference>;

pub type Device = burn::tensor::Device<Inference>;

/// The backend's name, for reports.
pub fn name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "flex") {
        "flex"
    } else {
        "ndarray"
    }
}

/// The default device, checked to work. On a machine without a GPU, the CUDA backend panics on its first
/// operation (burn 0.21); that is caught here and turned into a clear error instead of a crash or a hang.
pub fn device() -> Result<Device, String> {
    let device = Device::default();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(|| {
        use burn::prelude::*;
        let t = Tensor::<Inference, 1>::zeros([1], &crate::backend::Device::default());
        t.into_data();
    });
    std::panic::set_hook(hook);
    match ok {
        Ok(()) => Ok(device),
        Err(_) => Err(format!(
            "the {} backend could not run on this machine (for cuda: no NVIDIA driver / libcuda.so or NVRTC found); \
             rebuild with the default `flex` feature for CPU",
            name()
        )),
    }
}
